//! A minimal third-party channel plugin, written against the SDK.
//!
//! It greets each recipient on standard error and reports the message as
//! sent. Build it with `cargo build -p dunningd-plugin-hello` and name it in
//! the daemon configuration:
//!
//! ```yaml
//! channels:
//!   greeting:
//!     plugin: hello            # finds libdunningd_plugin_hello.so in plugin_dir
//!     settings: { greeting: Howdy }
//! ```

use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};

struct Hello;

struct HelloChannel {
    greeting: String,
}

impl Plugin for Hello {
    const NAME: &'static str = "hello";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = HelloChannel;

    fn open(config: ChannelConfig) -> Result<HelloChannel, String> {
        let greeting = match config.settings.get("greeting") {
            None => "Hello".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("settings.greeting must be a string, got {other}")),
        };
        Ok(HelloChannel { greeting })
    }
}

impl Channel for HelloChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        let name = request
            .recipient
            .name
            .as_deref()
            .unwrap_or(&request.recipient.customer_id);
        eprintln!(
            "{}, {name}! ({} / {})",
            self.greeting, request.workflow, request.step
        );
        DeliveryResponse::Sent {
            receipt: Some(format!("hello:{}", request.idempotency_key)),
        }
    }
}

export_plugin!(Hello);
