//! Artifacts on the box (docs/artifacts.md): [`plan`] decides (pure),
//! [`install`] does the file work and runs the commands, [`worker`] is the
//! task between them and the daemon.

pub mod install;
pub mod plan;
pub mod worker;

#[cfg(test)]
mod tests;
