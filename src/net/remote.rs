//! A provider reached over the network, for the router's [`Verifier`](crate::verify::Verifier):
//! jobs on `/pot/job/1`, openings on `/pot/open/1`, through the node's [`Client`].

use libp2p::PeerId;

use super::message::{JobAnswer, JobMsg, OpenAnswer, JOB_VERSION};
use super::Client;
use crate::commit::receipt::{JobRequest, OpenRequest, Opening, Receipt};
use crate::commit::wire::Bytes;
use crate::verify::{Provider, VerifyError};

/// A provider peer serving the weights `weight_hash` names. Its calls block on the node's
/// runtime (`rt`): run the verifier on a blocking thread, not on the runtime itself.
pub struct RemoteProvider {
    client: Client,
    peer: PeerId,
    weight_hash: [u8; 32],
    rt: tokio::runtime::Handle,
    /// The text of the last job (what the client is shown once its receipt has passed).
    pub last_text: String,
}

impl RemoteProvider {
    /// `peer`, asked to run the weights `weight_hash` names.
    pub fn new(
        client: Client,
        peer: PeerId,
        weight_hash: [u8; 32],
        rt: tokio::runtime::Handle,
    ) -> Self {
        Self {
            client,
            peer,
            weight_hash,
            rt,
            last_text: String::new(),
        }
    }

    fn err(&self, what: String) -> VerifyError {
        VerifyError::Peer {
            peer: self.peer.to_string(),
            what,
        }
    }
}

impl Provider for RemoteProvider {
    fn run(&mut self, request: &JobRequest, nonce: [u8; 32]) -> Result<Receipt, VerifyError> {
        let job = JobMsg {
            version: JOB_VERSION,
            weight_hash: Bytes(self.weight_hash),
            request: request.clone(),
            nonce: Bytes(nonce),
        };
        match self.rt.block_on(self.client.job(self.peer, job)) {
            Ok(JobAnswer::Done { text, receipt }) => {
                self.last_text = text;
                Ok(*receipt)
            }
            Ok(JobAnswer::Refused { reason }) => {
                Err(self.err(format!("refused the job: {reason}")))
            }
            Err(e) => Err(self.err(e.to_string())),
        }
    }

    fn open(&mut self, request: &OpenRequest) -> Result<Opening, String> {
        match self
            .rt
            .block_on(self.client.open(self.peer, request.clone()))
        {
            Ok(OpenAnswer::Opened(o)) => Ok(o),
            Ok(OpenAnswer::Refused { reason }) => Err(format!("refused to open: {reason}")),
            Err(e) => Err(e.to_string()),
        }
    }
}
