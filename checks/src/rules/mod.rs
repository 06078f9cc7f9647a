//! One module per check. Each holds the check's documentation, options and logic.
pub mod double_activation;
pub mod gradient_flow;
pub mod identity_overfit;
pub mod init_std;
pub mod initial_loss;
pub mod input_normalization;
pub mod loss_oscillation;
pub mod loss_scale;
pub mod nonfinite;
pub mod output_range;
pub mod overfit_batch;
pub mod prelude;
pub mod sequential_data;
pub mod stale_batchnorm;
