//! pod-manager binary: placeholder until the consumer lands.
fn main() {}
