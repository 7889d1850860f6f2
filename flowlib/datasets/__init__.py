"""The data the book trains on: MNIST read from torchvision's layout with checksums (`mnist`), its
verified download (`download`), and the seeded 2D toy densities (`toy`)."""
