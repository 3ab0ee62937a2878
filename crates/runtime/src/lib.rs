//! The runtime on top of the weight store: what `generate`, `chat`, a
//! browser page and a server share. It knows architectures (their
//! hyperparameters and tensors, read from the GGUF), lays out activations and
//! the KV cache in the guest's scratch memory, strings the guest's kernels
//! into a forward pass, and samples. The host does no model arithmetic: every
//! operation from the embedding lookup to the logits runs in the guest.

mod arch;
mod chat;
mod pool;
mod sample;
mod session;

pub use arch::{Architecture, Hyperparameters};
pub use chat::{CHAT_TEMPLATE_KEY, ChatTemplate, Message};
pub use sample::{Sampler, SamplerConfig};
pub use session::Session;
