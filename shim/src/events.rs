//! Task events published to containerd, in the order they happen.
//!
//! Events are packed by hand (type name from the Rust type, bytes from the
//! message) and handed to the crate's publisher queue through `forward`; its
//! `publish` would build the protobuf reflection tables, which cost resident
//! memory in every shim for no gain.

use std::{collections::HashMap, sync::Arc};

use containerd_shim::{event::Event, publisher::RemotePublisher};
use containerd_shim_protos::{
    protobuf::{
        well_known_types::{any::Any, timestamp::Timestamp},
        Message,
    },
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::Events as _,
    ttrpc::{asynchronous::TtrpcContext, ConnectionData, MessageHeader},
};
use tokio::sync::mpsc;

/// Package of containerd's task events (`containerd.events.TaskExit`, ...).
const EVENTS_PACKAGE: &str = "containerd.events";

/// A cheap handle; one forwarder task keeps events in order.
#[derive(Clone)]
pub struct Events {
    tx: Option<mpsc::UnboundedSender<Envelope>>,
    namespace: Arc<str>,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
        tokio::spawn(async move {
            let ctx = TtrpcContext {
                mh: MessageHeader::default(),
                metadata: HashMap::new(),
                timeout_nano: 0,
                connection_data: Arc::new(ConnectionData),
            };
            while let Some(envelope) = rx.recv().await {
                let topic = envelope.topic.clone();
                let req = ForwardRequest {
                    envelope: Some(envelope).into(),
                    ..Default::default()
                };
                // The crate's queue retries and reconnects on its own.
                if let Err(e) = publisher.forward(&ctx, req).await {
                    tracing::warn!("publish {topic}: {e}");
                }
            }
        });
        Events {
            tx: Some(tx),
            namespace: namespace.into(),
        }
    }

    /// Events go nowhere (used where no containerd is listening).
    pub fn disabled() -> Events {
        Events {
            tx: None,
            namespace: "".into(),
        }
    }

    pub fn send<E: Event + Message>(&self, event: E) {
        let envelope = envelope(&self.namespace, &event);
        tracing::debug!("event {}", envelope.topic);
        if let Some(tx) = &self.tx {
            let _ = tx.send(envelope);
        }
    }
}

/// `containerd.events.<Type>` for an event type of `containerd_shim_protos::events::task`.
fn type_url<E>() -> String {
    let name = std::any::type_name::<E>()
        .rsplit("::")
        .next()
        .unwrap_or_default();
    format!("{EVENTS_PACKAGE}.{name}")
}

fn envelope<E: Event + Message>(namespace: &str, event: &E) -> Envelope {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Envelope {
        timestamp: Some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
            ..Default::default()
        })
        .into(),
        namespace: namespace.to_string(),
        topic: event.topic(),
        event: Some(Any {
            type_url: type_url::<E>(),
            value: event.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::{events::task::TaskExit, protobuf::MessageFull};

    use super::*;

    #[test]
    fn envelope_carries_the_type_containerd_decodes() {
        let sut = envelope(
            "k8s.io",
            &TaskExit {
                container_id: "c1".into(),
                exit_status: 3,
                ..Default::default()
            },
        );
        assert_eq!(sut.topic, "/tasks/exit");
        assert_eq!(sut.namespace, "k8s.io");
        // Same name protobuf reflection would give.
        assert_eq!(sut.event.type_url, TaskExit::descriptor().full_name());
        let back = TaskExit::parse_from_bytes(&sut.event.value).unwrap();
        assert_eq!(back.exit_status, 3);
    }
}
