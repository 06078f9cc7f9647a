//! One module per check. Each holds the check's documentation, options and logic.
pub mod init_std;
