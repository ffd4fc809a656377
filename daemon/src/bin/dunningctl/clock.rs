//! `dunningctl clock`: the engine's clock, shown or moved (manual clocks only).

use dunningd::proto;

use crate::client::{Client, rpc};
use crate::output::{self, short_time};
use crate::{Cli, ClockCommand};

/// `clock show`, `clock advance BY`, `clock set TO`.
pub async fn run(cli: &Cli, client: &mut Client, command: &ClockCommand) -> anyhow::Result<bool> {
    use proto::advance_clock_request::Target;
    let clock = match command {
        ClockCommand::Show => client.get_clock(proto::GetClockRequest {}).await,
        ClockCommand::Advance { by } => {
            client
                .advance_clock(proto::AdvanceClockRequest {
                    target: Some(Target::By(by.clone())),
                })
                .await
        }
        ClockCommand::Set { to } => {
            client
                .advance_clock(proto::AdvanceClockRequest {
                    target: Some(Target::To(to.clone())),
                })
                .await
        }
    }
    .map_err(rpc)?
    .into_inner();
    output::print(cli.json, &clock, |clock| {
        out!(
            "{} ({} clock)",
            short_time(&clock.now),
            output::text(&clock.kind)
        );
    })?;
    Ok(true)
}
