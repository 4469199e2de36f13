//! api-server binary: placeholder until the API lands.
fn main() {}
