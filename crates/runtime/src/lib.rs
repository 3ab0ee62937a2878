//! The runtime on top of the weight store: what `generate`, `chat`, a
//! browser page and a server share. It knows architectures (their
//! hyperparameters and tensors, read from the GGUF, one file each under
//! `arch/`), turns an architecture's layers into a program the guest runs
//! (`program`), keeps sequences and their KV caches (`session`), and samples.
//! The host does no model arithmetic: every operation from the embedding
//! lookup to the logits runs in the guest, as one export call per thread.

mod arch;
mod chat;
mod pool;
mod program;
mod sample;
mod session;
mod stages;

pub use arch::Hyperparameters;
pub use chat::{CHAT_TEMPLATE_KEY, ChatTemplate, Message};
pub use program::{MAX_CTX, Program};
pub use sample::{Sampler, SamplerConfig};
pub use session::{SequenceId, Session, SessionOptions, StageOutput};
pub use stages::{load_stage, plan_stage, plan_stages, stage_layout};
