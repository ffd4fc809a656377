//! `dunningctl optout`, `optin` and `optouts`: who is not to be contacted where.

use dunningd::proto;

use crate::Cli;
use crate::client::{Client, rpc};
use crate::output::{self, Col, short_time, table};

/// `optout CUSTOMER --channel C`.
pub async fn optout(
    cli: &Cli,
    client: &mut Client,
    customer: &str,
    channel: &str,
    reason: Option<&str>,
) -> anyhow::Result<bool> {
    let record = client
        .opt_out(proto::OptOutRequest {
            customer_id: customer.to_string(),
            channel: channel.to_string(),
            reason: reason.unwrap_or_default().to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &record, |record| {
        out!(
            "{} opted out of {} ({})",
            output::full(&record.customer_id),
            output::text(&record.channel),
            output::text(&record.reason)
        );
    })?;
    Ok(true)
}

/// `optin CUSTOMER --channel C`.
pub async fn optin(
    cli: &Cli,
    client: &mut Client,
    customer: &str,
    channel: &str,
) -> anyhow::Result<bool> {
    let response = client
        .opt_in(proto::OptInRequest {
            customer_id: customer.to_string(),
            channel: channel.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &response, |response| {
        let (customer, channel) = (output::full(customer), output::text(channel));
        if response.removed {
            out!("{customer} opted in to {channel} again");
        } else {
            out!("{customer} had not opted out of {channel}; nothing changed");
        }
    })?;
    Ok(true)
}

/// `optouts`: newest first.
pub async fn list(
    cli: &Cli,
    client: &mut Client,
    customer: Option<&str>,
    limit: Option<u32>,
) -> anyhow::Result<bool> {
    let list = client
        .list_opt_outs(proto::ListOptOutsRequest {
            customer_id: customer.unwrap_or_default().to_string(),
            limit: limit.unwrap_or(0),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &list, |list| {
        let rows: Vec<Vec<String>> = list
            .optouts
            .iter()
            .map(|o| {
                vec![
                    o.customer_id.clone(),
                    o.channel.clone(),
                    o.source.clone(),
                    short_time(&o.created_at),
                    o.reason.clone(),
                ]
            })
            .collect();
        table(
            &[
                Col::Id("CUSTOMER"),
                Col::Text("CHANNEL"),
                Col::Text("SOURCE"),
                Col::Text("SINCE"),
                Col::Long("REASON"),
            ],
            &rows,
        );
    })?;
    Ok(true)
}
