//! The public API of `wormhole-linux`, item by item (the list in the crate docs): every item
//! and signature is pinned here, so a change to the surface shows up as a change to this file.
//! Nothing here touches the host.

use std::net::IpAddr;
use std::sync::Arc;

use wormhole_core::{Error, Firewall, HostNetwork, WireGuardDevice};
#[cfg(feature = "embedded")]
use wormhole_linux::EmbeddedDevice;
use wormhole_linux::{
    Backend, KernelDevice, NFT_TABLE, Network, Nftables, Pinger, ROUTE_PROTOCOL, SOCKET_DIR,
    UapiDevice, WIREGUARD_OVERHEAD,
};

fn device<T: WireGuardDevice + std::fmt::Debug + Send + Sync + 'static>() {}

/// Never called: it only has to type-check.
#[allow(dead_code)]
async fn async_signatures(network: &Network, firewall: &Nftables) -> Result<(), Error> {
    let _: u32 = network.wireguard_mtu(None::<IpAddr>).await?;
    let _: u32 = network.underlay_mtu(None::<IpAddr>).await?;
    let _: Vec<IpAddr> = network.underlay_addresses().await?;
    let _: bool = network.delete_link().await?;
    let _: Option<String> = network.link_kind().await?;
    let _: Vec<String> = network.delete_ports().await?;
    let _: bool = firewall.delete().await?;
    Ok(())
}

/// Never called: it only has to type-check.
#[allow(dead_code)]
async fn pinger_signatures(to: IpAddr) -> std::io::Result<()> {
    let pinger: Pinger = Pinger::new()?;
    let _: Option<std::time::Duration> = pinger
        .ping(
            to,
            Pinger::min_size(false),
            std::time::Duration::from_secs(1),
        )
        .await?;
    fn shared<T: std::fmt::Debug + Send + Sync + 'static>(_: &T) {}
    shared(&pinger);
    Ok(())
}

#[test]
fn public_api() {
    // WireGuard devices, one type per backend.
    let _: fn(Arc<Network>) -> Result<KernelDevice, Error> = KernelDevice::new;
    let _: fn(&str) -> Result<UapiDevice, Error> = UapiDevice::new;
    device::<KernelDevice>();
    device::<UapiDevice>();
    #[cfg(feature = "embedded")]
    {
        let _: fn(&str) -> Result<EmbeddedDevice, Error> = EmbeddedDevice::new;
        device::<EmbeddedDevice>();
    }

    // The backends by name; `auto` is `detect`.
    let _: fn(Backend) -> &'static str = Backend::as_str;
    let _: fn() -> Backend = Backend::detect;
    type Device = Arc<dyn WireGuardDevice>;
    let _: fn(Backend, &Arc<Network>) -> Result<Device, Error> = Backend::device;
    let names: Vec<&str> = [
        Backend::Kernel,
        Backend::Userspace,
        #[cfg(feature = "embedded")]
        Backend::Embedded,
    ]
    .into_iter()
    .map(Backend::as_str)
    .collect();
    assert_eq!(names[..2], ["kernel", "userspace"]);
    #[cfg(feature = "embedded")]
    assert_eq!(names[2], "embedded");
    fn value<T: std::fmt::Debug + Clone + Copy + PartialEq + Eq + Send + Sync>() {}
    value::<Backend>();

    // The host network.
    let _: fn(&str) -> Result<Network, Error> = Network::new;
    let _: fn(&Network) -> &str = Network::interface;
    fn network<T: HostNetwork + std::fmt::Debug + Clone + Send + Sync + 'static>() {}
    network::<Network>();

    // The firewall.
    let _: fn() -> Nftables = Nftables::new;
    fn firewall<T: Firewall + std::fmt::Debug + Default + Send + Sync + 'static>() {}
    firewall::<Nftables>();

    // Constants.
    assert_eq!(NFT_TABLE, "wormhole");
    assert_eq!(ROUTE_PROTOCOL, 87);
    assert_eq!(WIREGUARD_OVERHEAD, 80);
    assert_eq!(SOCKET_DIR, "/var/run/wireguard");
}
