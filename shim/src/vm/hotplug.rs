//! NICs and the seed disk added over QMP while the guest has not yet run (for a
//! network CNI set up after Create): each descriptor passed with its command, each
//! device on a free hotplug port. The guest finds them at boot as if cold-plugged.

use std::fs::File;
use std::os::fd::AsFd;

use qmp::qapi::qmp as schema;
use qmp::Qmp;
use serde_json::json;

use crate::host::network::PodNetwork;

/// `blockdev-add` with its options as JSON, as the command line gives them: the
/// `qapi` crate's typed options have no defaults to fill the rest.
#[derive(serde::Serialize)]
#[serde(transparent)]
struct BlockdevAdd(serde_json::Value);

impl qmp::qapi::Command for BlockdevAdd {
    type Ok = qmp::qapi::Empty;
    const NAME: &'static str = "blockdev-add";
    const ALLOW_OOB: bool = false;
}

impl schema::QmpCommand for BlockdevAdd {}

/// The fd set the seed image goes into (as on the command line).
const SEED_FDSET: i64 = 4;

fn failed(what: &str) -> impl Fn(qmp::QmpError) -> String + '_ {
    move |e| format!("adding {what}: {e}")
}

/// Adds each NIC of `network` and the seed image, each on the next of `ports`
/// (`None`: the machine's own bus takes hotplug, as `pc` does). The caller checked
/// there are enough before it took the network.
pub async fn attach(
    qmp: &Qmp,
    network: Option<PodNetwork>,
    seed: Option<File>,
    ports: &[Option<String>],
) -> Result<(), String> {
    let mut ports = ports.iter();
    let mut next_port = || ports.next().cloned().flatten();
    if let Some(seed) = seed {
        attach_seed(qmp, seed, next_port()).await?;
    }
    let Some(network) = network else { return Ok(()) };

    for (index, nic) in network.nics.into_iter().enumerate() {
        let id = format!("net{index}");
        let mut names = Vec::new();
        for (queue, fd) in nic.queues.iter().enumerate() {
            let name = format!("{id}q{queue}");
            qmp.pass_fd(fd.as_fd(), schema::getfd { fdname: name.clone() }).await.map_err(failed(&nic.name))?;
            names.push(name);
        }
        let mut vhost_names = Vec::new();
        for (queue, fd) in nic.vhost.iter().enumerate() {
            let name = format!("{id}v{queue}");
            qmp.pass_fd(fd.as_fd(), schema::getfd { fdname: name.clone() }).await.map_err(failed(&nic.name))?;
            vhost_names.push(name);
        }
        let tap = schema::NetdevTapOptions {
            fds: Some(names.join(":")),
            vhost: Some(!vhost_names.is_empty()),
            vhostfds: (!vhost_names.is_empty()).then(|| vhost_names.join(":")),
            ..Default::default()
        };
        qmp.execute(schema::netdev_add(schema::Netdev::tap { id: id.clone(), tap }))
            .await
            .map_err(failed(&nic.name))?;
        let mut arguments = json!({"netdev": id, "mac": crate::seed::mac_text(&nic.mac), "host_mtu": nic.mtu});
        if let Some(vectors) = crate::qemu::args::multiqueue_vectors(nic.queues.len()) {
            arguments["mq"] = json!(true);
            arguments["vectors"] = json!(vectors);
        }
        device_add(qmp, "virtio-net-pci", &format!("nic{index}"), next_port(), arguments).await?;
    }
    Ok(())
}

/// The seed image, read-only, on `port`.
async fn attach_seed(qmp: &Qmp, seed: File, port: Option<String>) -> Result<(), String> {
    let add_fd = schema::add_fd { fdset_id: Some(SEED_FDSET), opaque: Some("seed".into()) };
    qmp.pass_fd(seed.as_fd(), add_fd).await.map_err(failed("the seed"))?;
    let file = json!({"driver": "file", "node-name": "seed-file", "read-only": true,
                      "filename": format!("/dev/fdset/{SEED_FDSET}")});
    qmp.execute(BlockdevAdd(file)).await.map_err(failed("the seed's file"))?;
    let raw = json!({"driver": "raw", "node-name": "seed", "read-only": true, "file": "seed-file"});
    qmp.execute(BlockdevAdd(raw)).await.map_err(failed("the seed's node"))?;
    device_add(qmp, "virtio-blk-pci", "seed-disk", port, json!({"drive": "seed"})).await
}

async fn device_add(
    qmp: &Qmp,
    driver: &str,
    id: &str,
    bus: Option<String>,
    arguments: serde_json::Value,
) -> Result<(), String> {
    let arguments = match arguments {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => Default::default(),
    };
    let command = schema::device_add { bus, id: Some(id.to_string()), driver: driver.to_string(), arguments };
    qmp.execute(command).await.map(drop).map_err(|e| format!("adding {id}: {e}"))
}
