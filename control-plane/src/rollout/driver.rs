//! The rollout driver.
