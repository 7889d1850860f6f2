"""What only the chapters need: quick mode, seeding and figure paths (`chapter`), the playground widget,
plots and warps of 2D flows, the measurements the chapters make (`analysis`, `diagnostics`, `baselines`,
`shuffling`). It may import everything else in flowlib; nothing imports it."""
