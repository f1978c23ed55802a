//! The API's handlers, one module per area; each is a few lines over the
//! service layer or the library, reached only through [`super::api::ROUTES`].

pub mod audit;
pub mod executions;
pub mod flows;
pub mod secrets;
pub mod tokens;
