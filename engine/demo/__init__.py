"""The demo model: procedural training data, the small SD-1.x pipeline, its CPU training, the
semantics measurements, and the shipped weights (`weights/`)."""
