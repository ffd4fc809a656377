//! Any bytes as a plugin's answer to a send: always an outcome, with its
//! texts and receipt bounded.
#![no_main]

use dunningd::plugin_host::{MAX_PLUGIN_TEXT, MAX_RECEIPT, decode_response};
use dunningd_plugin_api::wire::DeliveryResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text_ok = |t: &str| t.chars().count() <= MAX_PLUGIN_TEXT + 1 + 200;
    match decode_response("fuzz", data) {
        DeliveryResponse::Sent { receipt } => {
            if let Some(r) = receipt {
                assert!(r.len() <= MAX_RECEIPT && !r.chars().any(char::is_control));
            }
        }
        DeliveryResponse::Retryable { error, .. }
        | DeliveryResponse::Permanent { error }
        | DeliveryResponse::Unknown { error } => assert!(text_ok(&error), "{error}"),
        DeliveryResponse::Skipped { reason } => assert!(text_ok(&reason), "{reason}"),
    }
});
