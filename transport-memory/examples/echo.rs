//! The ADR-062 echo reactor between two nodes on the memory transport.
//!
//! `cargo run --example echo` — alice pings bob three times; bob answers each ping with a pong.

use std::time::Duration;

use anyhow::{Context, bail};
use p2p::echo::{Echo, EchoEvent, echo_channel_descriptor, handle_echo};
use p2p::{Outbound, PeerStatus};
use p2p_transport_memory::MemoryNetwork;
use p2p_transport_memory::testkit::{TestNode, TestNodeOptions};

const PINGS: usize = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2p_transport_memory::testkit::init_tracing();

    let net = MemoryNetwork::default();
    let mut alice = TestNode::new(&net, "alice", TestNodeOptions::default());
    let mut bob = TestNode::new(&net, "bob", TestNodeOptions::default());
    let mut alice_ch = alice.channel::<Echo>(echo_channel_descriptor());
    let mut bob_ch = bob.channel::<Echo>(echo_channel_descriptor());
    alice.start();
    bob.start();
    println!("alice is {}", alice.id);
    println!("bob   is {}", bob.id);

    alice.dial(&bob);
    let update = tokio::time::timeout(Duration::from_secs(10), alice.updates.recv())
        .await
        .context("alice saw no peer update")??;
    println!("alice: peer {} is {:?}", update.node_id, update.status);
    if update.status != PeerStatus::Up {
        bail!("unexpected update {update:?}");
    }
    bob.wait_up(&[alice.id], Duration::from_secs(10)).await;

    // Bob: answer pings until the channel closes.
    let bob_task = tokio::spawn(async move {
        let mut answered = 0;
        while let Some(env) = bob_ch.recv().await {
            if let EchoEvent::Pinged { from, content } = handle_echo(&bob_ch, env).await {
                println!("bob:   ping {content:?} from {from} -> pong");
                answered += 1;
            }
        }
        answered
    });

    for i in 1..=PINGS {
        let content = format!("👋 #{i}");
        let sent = alice_ch.send(Outbound::broadcast(Echo::Ping(content.clone()))).await?;
        println!("alice: ping {content:?} queued for {} peer(s)", sent.queued);
    }
    let mut pongs = 0;
    while pongs < PINGS {
        let env = tokio::time::timeout(Duration::from_secs(10), alice_ch.recv())
            .await
            .context("no pong within 10 s")?
            .context("alice's channel closed")?;
        match handle_echo(&alice_ch, env).await {
            EchoEvent::Ponged { from, content } => {
                println!("alice: pong {content:?} from {from}");
                pongs += 1;
            }
            other => println!("alice: {other:?}"),
        }
    }
    alice.router.stop().await;
    bob.router.stop().await;
    drop(bob.router);
    let answered = bob_task.await?;
    println!("{pongs}/{PINGS} pings answered by pongs (bob answered {answered})");
    Ok(())
}
