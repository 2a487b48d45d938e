pub use vlalign_models as models;
