//! `dunningctl plugins`: the channel plugins the daemon loaded.

use dunningd::proto;

use crate::Cli;
use crate::client::{Client, rpc};
use crate::output::{self, Col, table};

/// `plugins list`.
pub async fn list(cli: &Cli, client: &mut Client) -> anyhow::Result<bool> {
    let list = client
        .list_plugins(proto::ListPluginsRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &list, |list| {
        let rows: Vec<Vec<String>> = list
            .plugins
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.version.clone(),
                    p.abi_version.to_string(),
                    p.channels.join(", "),
                    p.path.clone(),
                ]
            })
            .collect();
        table(
            &[
                Col::Text("PLUGIN"),
                Col::Text("VERSION"),
                Col::Text("ABI"),
                Col::Text("CHANNELS"),
                Col::Id("PATH"),
            ],
            &rows,
        );
    })?;
    Ok(true)
}
