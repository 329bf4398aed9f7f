//! An empty program: the floor for process start-up time in the benchmark.

fn main() {}
