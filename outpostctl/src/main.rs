//! outpostctl: the operator's command-line client of the REST API.
#![forbid(unsafe_code)]

fn main() {}
