"""What only the chapters need: quick mode, seeding and figure paths (`chapter`), the training playground and
chapter 1's widget (`playground`, `widgets`, whose `show` puts them on a page), plots and warps of 2D flows, and
the measurements the chapters make (`analysis`, `diagnostics`, `baselines`, `shuffling`), and the exercises'
code solutions, run in the chapters and shown closed (`solutions`). It may import
everything else in flowlib; nothing imports it."""
