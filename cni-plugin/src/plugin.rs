//! The verbs: ADD, DEL, CHECK, STATUS, GC and VERSION for both binaries.
//!
//! ADD is retry-safe (a complete earlier ADD is answered again, a partial
//! one is redone) and transactional: every step it took is undone, in
//! reverse, when a later one fails, and the error says what failed and what
//! was rolled back.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::Value;

use crate::api::{self, ApiErrorKind, Attachment, ClientError, Request, Response};
use crate::config::{self, AgentSettings, Mode, NetConf};
use crate::netlink::{NetlinkError, RouteSocket};
use crate::netns::{NetNs, NetnsError};
use crate::pod_iface::{self, Link, POD_GATEWAY_V4, POD_GATEWAY_V6};
use crate::spec::{
    self, CniError, CniResult, CniVersion, Command, Environment, ErrorCode, Interface, IpConfig,
    RouteConfig,
};
use crate::{timings, ROUTE_PROTOCOL};

/// What one invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success; the JSON to print, if any (DEL, GC and STATUS print none).
    Success(Option<Value>),
    /// Failure; the error object in the version asked.
    Failure(CniError, CniVersion),
}

/// Runs one invocation: `env` reads the `CNI_*` variables, `stdin` is the
/// network configuration.
pub fn run(mode: Mode, env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let answer_version = config::peek_version(stdin).unwrap_or(CniVersion::LATEST);
    let env = match Environment::from_lookup(env) {
        Ok(env) => env,
        Err(e) => return Outcome::Failure(e, answer_version),
    };
    if env.command == Command::Version {
        return Outcome::Success(Some(spec::version_json(answer_version)));
    }
    let conf = match NetConf::parse(stdin, mode) {
        Ok(conf) => conf,
        Err(e) => return Outcome::Failure(e, answer_version),
    };
    timings::mark("parse");
    if !conf.version.has(env.command) {
        let e = CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "{:?} is not part of CNI {} (CHECK needs 0.4.0, STATUS and GC 1.1.0)",
                env.command, conf.version
            ),
        );
        return Outcome::Failure(e, conf.version);
    }
    let result = match (env.command, mode) {
        (Command::Add, Mode::Interface) => add(&env, &conf).map(Some),
        (Command::Add, Mode::Ipam) => ipam_add(&env, &conf).map(Some),
        (Command::Del, Mode::Interface) => del(&env, &conf).map(|()| None),
        (Command::Del, Mode::Ipam) => release(&attachment(&env, &conf), &conf.agent).map(|()| None),
        (Command::Check, Mode::Interface) => check(&env, &conf).map(|()| None),
        (Command::Check, Mode::Ipam) => ipam_check(&env, &conf).map(|()| None),
        (Command::Gc, _) => gc(&conf).map(|()| None),
        (Command::Status, _) => status(&conf).map(|()| None),
        (Command::Version, _) => Ok(Some(spec::version_json(conf.version))),
    };
    match result {
        Ok(json) => Outcome::Success(json),
        Err(e) => Outcome::Failure(e, conf.version),
    }
}

fn attachment(env: &Environment, conf: &NetConf) -> Attachment {
    Attachment {
        network: conf.name.clone(),
        container_id: env.container_id.clone().unwrap_or_default(),
        ifname: env.ifname.clone().unwrap_or_default(),
    }
}

fn kernel(e: NetlinkError) -> CniError {
    CniError::new(ErrorCode::Kernel, e.to_string())
}

fn netns_error(e: NetnsError) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, format!("CNI_NETNS: {e}"))
}

fn agent_error(e: ClientError) -> CniError {
    let code = match &e {
        ClientError::Unreachable { .. } | ClientError::NoAnswer { .. } => ErrorCode::TryAgainLater,
        ClientError::Refused(api) => match api.kind {
            ApiErrorKind::Exhausted => ErrorCode::NoAddress,
            ApiErrorKind::Unavailable => ErrorCode::TryAgainLater,
            _ => ErrorCode::Agent,
        },
        ClientError::Decode(_) => ErrorCode::Agent,
    };
    CniError::new(code, e.to_string())
}

fn ask(agent: &AgentSettings, request: &Request) -> Result<Response, ClientError> {
    api::call(&agent.socket, request, agent.timeout)
}

/// Asks the agent for the attachment's addresses. On failure, also says
/// whether the agent was reached (and so may have allocated something).
fn assign(env: &Environment, conf: &NetConf) -> Result<Vec<IpNet>, (CniError, bool)> {
    let request = Request::Assign {
        attachment: attachment(env, conf),
        pod_namespace: env.args.get("K8S_POD_NAMESPACE").map(str::to_owned),
        pod_name: env.args.get("K8S_POD_NAME").map(str::to_owned),
        num_v4: conf.agent.num_v4,
        num_v6: conf.agent.num_v6,
    };
    let response = ask(&conf.agent, &request).map_err(|e| {
        let reached = !matches!(e, ClientError::Unreachable { .. });
        (agent_error(e), reached)
    })?;
    match response {
        Response::Addresses(addresses) => {
            let v4 = api::of_family(&addresses, true).count();
            let v6 = api::of_family(&addresses, false).count();
            if v4 != conf.agent.num_v4 as usize || v6 != conf.agent.num_v6 as usize {
                return Err((
                    CniError::new(
                        ErrorCode::Agent,
                        format!(
                            "the agent gave {v4} IPv4 and {v6} IPv6 addresses, {} and {} were asked",
                            conf.agent.num_v4, conf.agent.num_v6
                        ),
                    ),
                    true,
                ));
            }
            Ok(addresses)
        }
        other => Err((unexpected(&other), true)),
    }
}

fn lookup(attachment: &Attachment, agent: &AgentSettings) -> Result<Vec<IpNet>, CniError> {
    let request = Request::Lookup {
        attachment: attachment.clone(),
    };
    match ask(agent, &request) {
        Ok(Response::Addresses(addresses)) => Ok(addresses),
        Ok(other) => Err(unexpected(&other)),
        Err(ClientError::Refused(e)) if e.kind == ApiErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(agent_error(e)),
    }
}

fn release(attachment: &Attachment, agent: &AgentSettings) -> Result<(), CniError> {
    let request = Request::Release {
        attachment: attachment.clone(),
    };
    match ask(agent, &request).map_err(agent_error)? {
        Response::Released(_) => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(response: &Response) -> CniError {
    CniError::new(
        ErrorCode::Agent,
        format!("the felix agent answered out of turn: {response:?}"),
    )
}

/// What ADD has done so far, undone in reverse on failure.
struct Rollback<'a> {
    conf: &'a NetConf,
    attachment: Attachment,
    host_link: Option<String>,
    assigned: bool,
}

impl Rollback<'_> {
    /// Undoes everything; returns what it undid (for the error's details)
    /// and what it could not.
    fn run(self, host: &mut RouteSocket) -> String {
        let mut notes = Vec::new();
        // Deleting the host end deletes the pod end, the pod's addresses
        // and routes, and the node's routes through it.
        if let Some(name) = &self.host_link {
            match pod_iface::delete_link(host, name) {
                Ok(_) => notes.push(format!("deleted veth {name}")),
                Err(e) => notes.push(format!("could not delete veth {name}: {e}")),
            }
        }
        if self.assigned {
            match release(&self.attachment, &self.conf.agent) {
                Ok(()) => notes.push("released the addresses".to_owned()),
                Err(e) => notes.push(format!(
                    "could not release the addresses ({}); the runtime's DEL or GC will",
                    e.msg
                )),
            }
        }
        if notes.is_empty() {
            "nothing to roll back".to_owned()
        } else {
            format!("rolled back: {}", notes.join(", "))
        }
    }
}

fn add(env: &Environment, conf: &NetConf) -> Result<Value, CniError> {
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set"))?;
    let netns = NetNs::open(netns_path).map_err(netns_error)?;
    timings::mark("netns");
    let mut host = RouteSocket::open().map_err(|e| kernel(e.into()))?;
    let mut pod = netns.route_socket().map_err(netns_error)?;
    timings::mark("sockets");
    let attachment = attachment(env, conf);
    let host_name = pod_iface::host_veth_name(&attachment.container_id, &attachment.ifname);

    // A fresh ADD, the usual case, creates the pair at once, without
    // looking anything up first (each look-up takes the kernel's RTNL lock,
    // which all the node's pod starts queue for). A name taken means a
    // retried or partial ADD, or a name that is not felix's: sorted out by
    // `settle_existing`, then the pair is created again.
    let ipv6 = conf.agent.num_v6 > 0;
    let pod_mac = pod_iface::pod_veth_mac(&attachment.container_id, &attachment.ifname);
    let create = |host: &mut RouteSocket| {
        pod_iface::create_veth(
            host,
            &host_name,
            &attachment.ifname,
            pod_mac,
            conf.mtu,
            &netns,
            !ipv6,
        )
    };
    let echoed = match create(&mut host) {
        Ok(echoed) => echoed,
        Err(e) if e.errno() == Some(nix::libc::EEXIST) => {
            let settled =
                settle_existing(conf, &attachment, &netns, &mut host, &mut pod, &host_name)?;
            if let Some(result) = settled {
                return Ok(result);
            }
            create(&mut host).map_err(|e| veth_error(e, &host_name, &attachment.ifname))?
        }
        Err(e) => return Err(veth_error(e, &host_name, &attachment.ifname)),
    };
    timings::mark("veth");
    let made = MadeVeth {
        host_name: &host_name,
        echoed,
        pod_mac,
    };
    let mut rollback = Rollback {
        conf,
        attachment: attachment.clone(),
        host_link: Some(host_name.clone()),
        assigned: false,
    };
    match add_steps(env, conf, &netns, &mut host, &mut pod, made, &mut rollback) {
        Ok(result) => Ok(result),
        Err(e) => {
            let undone = rollback.run(&mut host);
            let details = match e.details {
                Some(d) => format!("{d}; {undone}"),
                None => undone,
            };
            Err(CniError {
                details: Some(details),
                ..e
            })
        }
    }
}

/// ADD found a name of its pair taken. A complete earlier ADD of the same
/// attachment is answered again (`Some`); a partial one is deleted, to be
/// made again with the same addresses (the agent's assign is idempotent);
/// a pod interface that is not felix's is code 105.
fn settle_existing(
    conf: &NetConf,
    attachment: &Attachment,
    netns: &NetNs,
    host: &mut RouteSocket,
    pod: &mut RouteSocket,
    host_name: &str,
) -> Result<Option<Value>, CniError> {
    let existing_host = pod_iface::find_link(host, host_name).map_err(kernel)?;
    let existing_pod = pod_iface::find_link(pod, &attachment.ifname).map_err(kernel)?;
    if let (Some(_), Some(_)) = (&existing_host, &existing_pod) {
        let addresses = lookup(attachment, &conf.agent)?;
        if !addresses.is_empty() {
            let state = inspect(host, pod, host_name, &attachment.ifname)?;
            if verify(&state, &addresses, conf).is_empty() {
                return Ok(Some(render(conf, &state, &addresses, netns)));
            }
        }
    }
    if existing_host.is_some() {
        pod_iface::delete_link(host, host_name).map_err(kernel)?;
    }
    // The pod end goes with the host end; a pod interface that is still
    // there is not felix's.
    if existing_pod.is_some()
        && (existing_host.is_none()
            || pod_iface::find_link(pod, &attachment.ifname)
                .map_err(kernel)?
                .is_some())
    {
        return Err(CniError::new(
            ErrorCode::InterfaceExists,
            format!(
                "{} already exists in {} and is not felix's",
                attachment.ifname,
                netns.path().display()
            ),
        ));
    }
    Ok(None)
}

fn veth_error(e: NetlinkError, host_name: &str, ifname: &str) -> CniError {
    if e.errno() == Some(nix::libc::EEXIST) {
        CniError::new(
            ErrorCode::InterfaceExists,
            format!("{host_name} or {ifname} exists already: {e}"),
        )
    } else {
        kernel(e)
    }
}

/// The pair ADD just made: the host end's name, the host end as the
/// kernel echoed it (if it did) and the MAC given to the pod end.
struct MadeVeth<'a> {
    host_name: &'a str,
    echoed: Option<Link>,
    pod_mac: [u8; 6],
}

fn add_steps(
    env: &Environment,
    conf: &NetConf,
    netns: &NetNs,
    host: &mut RouteSocket,
    pod: &mut RouteSocket,
    made: MadeVeth<'_>,
    rollback: &mut Rollback<'_>,
) -> Result<Value, CniError> {
    let ifname = rollback.attachment.ifname.clone();
    let host_name = made.host_name;
    // With IPv6 the host end was made down: it comes up only once its
    // duplicate address detection is off, so that its link-local address
    // (the pod's IPv6 gateway) is usable at once.
    let ipv6 = conf.agent.num_v6 > 0;
    let host_link = match made.echoed {
        Some(link) => link,
        None => pod_iface::find_link(host, host_name)
            .map_err(kernel)?
            .ok_or_else(|| CniError::new(ErrorCode::Kernel, format!("{host_name} vanished")))?,
    };
    pod_iface::configure_host_end(host_name, ipv6)
        .map_err(|e| CniError::new(ErrorCode::Kernel, e.to_string()))?;
    if ipv6 {
        pod_iface::set_up(host, &host_link).map_err(kernel)?;
    }
    timings::mark("host_end");

    // Ask for the addresses only now: everything that can fail without
    // the agent has been tried. From here on the agent may hold addresses
    // for the attachment, unless it could not even be reached.
    rollback.assigned = true;
    let addresses = assign(env, conf).map_err(|(e, reached)| {
        rollback.assigned = reached;
        e
    })?;
    timings::mark("agent");

    let vanished = || {
        CniError::new(
            ErrorCode::Kernel,
            format!(
                "{ifname} vanished from {} (was the pod deleted?)",
                netns.path().display()
            ),
        )
    };
    // The host end's `IFLA_LINK` is the pod end's index in the pod's
    // namespace, and the plugin chose its name, MAC and MTU: no look-up in
    // the pod's namespace (a veth always reports its peer; the look-up is
    // the fallback all the same).
    let pod_link = match host_link.peer_index {
        Some(index) if host_link.is_veth => Link {
            index,
            name: ifname.clone(),
            mac: made.pod_mac.to_vec(),
            mtu: conf.mtu,
            up: true,
            is_veth: true,
            peer_index: Some(host_link.index),
        },
        _ => pod_iface::find_link(pod, &ifname)
            .map_err(kernel)?
            .ok_or_else(vanished)?,
    };
    let pod_addresses: Vec<IpAddr> = addresses.iter().map(IpNet::addr).collect();
    let pod_routes = pod_iface::pod_routes(&addresses, &pod_link);
    pod_iface::configure_pod_end(pod, &pod_link, &pod_addresses, &pod_routes).map_err(|e| {
        if e.errno() == Some(nix::libc::ENODEV) {
            vanished()
        } else {
            kernel(e)
        }
    })?;
    timings::mark("pod_end");
    for address in &addresses {
        let added = pod_iface::add_route(host, pod_iface::host_route(address.addr(), &host_link));
        // The agent's route programmer also installs this node's pod routes
        // (same protocol): when it got there first, the route is ours.
        let added = match added {
            Err(e) if e.errno() == Some(nix::libc::EEXIST) => {
                if pod_iface::routed_to(host, address.addr(), &host_link).map_err(kernel)? {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            other => other,
        };
        added.map_err(|e| {
            if e.errno() == Some(nix::libc::EEXIST) {
                CniError::new(
                    ErrorCode::AddressConflict,
                    format!(
                        "{} is already routed on this node (another pod, or a route not \
                             made by felix): refusing to take it over",
                        address.addr()
                    ),
                )
            } else {
                kernel(e)
            }
        })?;
    }
    timings::mark("routes");
    // The result needs only the two links, which are at hand: no dump of
    // the node's routing table (which can hold every BGP route) per ADD.
    let state = State {
        host: Some(host_link),
        pod: Some(pod_link),
        pod_addresses: Vec::new(),
        pod_routes: Vec::new(),
        host_routes: Vec::new(),
    };
    Ok(render(conf, &state, &addresses, netns))
}

/// The kernel's view of one attachment.
struct State {
    host: Option<Link>,
    pod: Option<Link>,
    pod_addresses: Vec<IpNet>,
    pod_routes: Vec<pod_iface::Route>,
    host_routes: Vec<pod_iface::Route>,
}

fn inspect(
    host: &mut RouteSocket,
    pod: &mut RouteSocket,
    host_name: &str,
    ifname: &str,
) -> Result<State, CniError> {
    let host_link = pod_iface::find_link(host, host_name).map_err(kernel)?;
    let pod_link = pod_iface::find_link(pod, ifname).map_err(kernel)?;
    let mut state = State {
        host: host_link,
        pod: None,
        pod_addresses: Vec::new(),
        pod_routes: Vec::new(),
        host_routes: Vec::new(),
    };
    if let Some(link) = &pod_link {
        state.pod_addresses = pod_iface::addresses_of(pod, link).map_err(kernel)?;
        for v4 in [true, false] {
            state
                .pod_routes
                .extend(pod_iface::routes(pod, v4).map_err(kernel)?);
        }
    }
    for v4 in [true, false] {
        state
            .host_routes
            .extend(pod_iface::routes(host, v4).map_err(kernel)?);
    }
    state.pod = pod_link;
    Ok(state)
}

/// Every difference between the kernel and what ADD makes; empty when they
/// agree.
fn verify(state: &State, addresses: &[IpNet], conf: &NetConf) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(host) = &state.host else {
        return vec!["the host end of the veth is missing".to_owned()];
    };
    let Some(pod) = &state.pod else {
        return vec!["the pod's interface is missing".to_owned()];
    };
    if !host.up {
        problems.push(format!("{} is down", host.name));
    }
    if !pod_iface::proxy_arp_on(&host.name) {
        problems.push(format!("proxy ARP is off on {}", host.name));
    }
    if !pod.up {
        problems.push(format!("{} is down in the pod", pod.name));
    }
    if pod.mtu != conf.mtu {
        problems.push(format!(
            "{} has MTU {}, the config says {}",
            pod.name, pod.mtu, conf.mtu
        ));
    }
    let want: BTreeSet<IpNet> = addresses.iter().map(|a| IpNet::from(a.addr())).collect();
    let have: BTreeSet<IpNet> = state.pod_addresses.iter().copied().collect();
    for missing in want.difference(&have) {
        problems.push(format!("{missing} is allocated but not on {}", pod.name));
    }
    for extra in have.difference(&want) {
        problems.push(format!(
            "{extra} is on {} but not allocated to it",
            pod.name
        ));
    }
    let has_default = |gateway: IpAddr| {
        state.pod_routes.iter().any(|r| {
            r.dst.prefix_len() == 0 && r.gateway == Some(gateway) && r.oif == Some(pod.index)
        })
    };
    if api::of_family(addresses, true).next().is_some() && !has_default(IpAddr::V4(POD_GATEWAY_V4))
    {
        problems.push(format!("the pod has no default route via {POD_GATEWAY_V4}"));
    }
    if api::of_family(addresses, false).next().is_some() && !has_default(IpAddr::V6(POD_GATEWAY_V6))
    {
        problems.push(format!("the pod has no default route via {POD_GATEWAY_V6}"));
    }
    for address in addresses {
        let dst = IpNet::from(address.addr());
        let route = state.host_routes.iter().find(|r| r.dst == dst);
        match route {
            None => problems.push(format!("the node has no route to {dst}")),
            Some(r) if r.oif != Some(host.index) || r.gateway.is_some() => problems.push(format!(
                "the node's route to {dst} does not go to {}",
                host.name
            )),
            Some(r) if r.protocol != ROUTE_PROTOCOL => problems.push(format!(
                "the node's route to {dst} has protocol {}, not felix's {ROUTE_PROTOCOL}",
                r.protocol
            )),
            Some(_) => {}
        }
    }
    problems
}

/// This plugin's result, appended to a previous plugin's when chained.
fn render(conf: &NetConf, state: &State, addresses: &[IpNet], netns: &NetNs) -> Value {
    let mut own = CniResult::default();
    if let Some(host) = &state.host {
        own.interfaces.push(Interface {
            name: host.name.clone(),
            mac: host.mac_string(),
            sandbox: None,
            mtu: Some(host.mtu),
        });
    }
    if let Some(pod) = &state.pod {
        own.interfaces.push(Interface {
            name: pod.name.clone(),
            mac: pod.mac_string(),
            sandbox: Some(netns.path().display().to_string()),
            mtu: Some(pod.mtu),
        });
    }
    let pod_index = own.interfaces.len().checked_sub(1);
    for address in addresses {
        own.ips.push(IpConfig {
            address: IpNet::from(address.addr()),
            gateway: None,
            interface: pod_index,
        });
    }
    own.routes = default_routes(addresses);
    own.dns = conf.dns.clone();
    let result = match &conf.prev_result {
        Some(prev) => prev.clone().append(own),
        None => own,
    };
    result.to_json(conf.version)
}

fn default_routes(addresses: &[IpNet]) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    if api::of_family(addresses, true).next().is_some() {
        routes.push(RouteConfig {
            dst: IpNet::V4(ipnet::Ipv4Net::default()),
            gw: Some(IpAddr::V4(POD_GATEWAY_V4)),
        });
    }
    if api::of_family(addresses, false).next().is_some() {
        routes.push(RouteConfig {
            dst: IpNet::V6(ipnet::Ipv6Net::default()),
            gw: Some(IpAddr::V6(POD_GATEWAY_V6)),
        });
    }
    routes
}

fn del(env: &Environment, conf: &NetConf) -> Result<(), CniError> {
    let attachment = attachment(env, conf);
    let host_name = pod_iface::host_veth_name(&attachment.container_id, &attachment.ifname);
    let mut host = RouteSocket::open().map_err(|e| kernel(e.into()))?;
    // Deleting the host end takes the pod end, its addresses and the
    // node's routes through it along. When the netns is gone the kernel
    // is removing the pair already; "no such device" is success.
    pod_iface::delete_link(&mut host, &host_name).map_err(kernel)?;
    timings::mark("delete_veth");
    release(&attachment, &conf.agent)?;
    timings::mark("agent");
    Ok(())
}

fn check(env: &Environment, conf: &NetConf) -> Result<(), CniError> {
    let attachment = attachment(env, conf);
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set"))?;
    let netns = NetNs::open(netns_path).map_err(netns_error)?;
    let mut host = RouteSocket::open().map_err(|e| kernel(e.into()))?;
    let mut pod = netns.route_socket().map_err(netns_error)?;
    let addresses = lookup(&attachment, &conf.agent)?;
    if addresses.is_empty() {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!(
                "the agent holds no addresses for {}",
                attachment.handle_id()
            ),
        ));
    }
    let host_name = pod_iface::host_veth_name(&attachment.container_id, &attachment.ifname);
    let state = inspect(&mut host, &mut pod, &host_name, &attachment.ifname)?;
    let mut problems = verify(&state, &addresses, conf);
    problems.extend(prev_result_problems(conf, &addresses));
    check_outcome(problems)
}

/// The previous result's addresses must be the allocation (CHECK).
fn prev_result_problems(conf: &NetConf, addresses: &[IpNet]) -> Vec<String> {
    let Some(prev) = &conf.prev_result else {
        return Vec::new();
    };
    let want: BTreeSet<IpAddr> = addresses.iter().map(IpNet::addr).collect();
    let have: BTreeSet<IpAddr> = prev.ips.iter().map(|ip| ip.address.addr()).collect();
    want.symmetric_difference(&have)
        .map(|a| {
            if want.contains(a) {
                format!("{a} is allocated but not in prevResult")
            } else {
                format!("{a} is in prevResult but not allocated")
            }
        })
        .collect()
}

fn check_outcome(problems: Vec<String>) -> Result<(), CniError> {
    match problems.split_first() {
        None => Ok(()),
        Some((first, rest)) => {
            let e = CniError::new(ErrorCode::CheckFailed, first.clone());
            Err(if rest.is_empty() {
                e
            } else {
                e.with_details(problems.join("; "))
            })
        }
    }
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "GC needs cni.dev/valid-attachments",
        ));
    };
    let request = Request::Gc {
        network: conf.name.clone(),
        valid: valid.clone(),
    };
    match ask(&conf.agent, &request).map_err(agent_error)? {
        Response::Collected(_) => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    match ask(&conf.agent, &Request::Status) {
        Ok(Response::Ready { .. }) => Ok(()),
        Ok(other) => Err(unexpected(&other)),
        Err(e) => Err(CniError::new(ErrorCode::NotAvailable, e.to_string())),
    }
}

/// felix-ipam ADD: the addresses only, for the delegating plugin to
/// configure: each with its block's prefix length (as host-local gives its
/// subnet's), and the IPv4 gateway 169.254.1.1, which a point-to-point
/// plugin such as the reference `ptp` puts on its host end and routes to
/// on-link. No routes: such a plugin applies the result's routes before
/// its own link route to the gateway, so a route via 169.254.1.1 would be
/// refused as unreachable.
fn ipam_add(env: &Environment, conf: &NetConf) -> Result<Value, CniError> {
    let addresses = assign(env, conf).map_err(|(e, _)| e)?;
    let mut result = CniResult::default();
    for address in &addresses {
        result.ips.push(IpConfig {
            address: *address,
            gateway: address
                .addr()
                .is_ipv4()
                .then_some(IpAddr::V4(POD_GATEWAY_V4)),
            interface: None,
        });
    }
    result.dns = conf.dns.clone();
    Ok(result.to_json(conf.version))
}

fn ipam_check(env: &Environment, conf: &NetConf) -> Result<(), CniError> {
    let attachment = attachment(env, conf);
    let addresses = lookup(&attachment, &conf.agent)?;
    if addresses.is_empty() {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!(
                "the agent holds no addresses for {}",
                attachment.handle_id()
            ),
        ));
    }
    check_outcome(prev_result_problems(conf, &addresses))
}

/// The process entry point shared by both binaries: reads the environment
/// and stdin, prints the result or the error object, returns the exit
/// status (0 or 1).
pub fn main_with(mode: Mode) -> std::process::ExitCode {
    use std::io::{Read, Write};
    timings::start(std::env::var(timings::ENV).ok().as_deref());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(mode, |k| std::env::var(k).ok(), &stdin),
        Err(e) => Outcome::Failure(
            CniError::new(ErrorCode::Io, format!("reading stdin: {e}")),
            CniVersion::LATEST,
        ),
    };
    let (json, code) = match outcome {
        Outcome::Success(json) => (json, std::process::ExitCode::SUCCESS),
        Outcome::Failure(e, version) => {
            eprintln!("{}: {e}", program_name(mode));
            (Some(e.to_json(version)), std::process::ExitCode::FAILURE)
        }
    };
    if let Some(json) = json {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}").and_then(|()| out.flush());
    }
    if let Some(line) = timings::line() {
        eprintln!("{line}");
    }
    code
}

fn program_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Interface => "felix-cni",
        Mode::Ipam => "felix-ipam",
    }
}

/// The mode a binary named `argv0` runs in: `felix-ipam` (or a link of that
/// name) is IPAM only.
pub fn mode_for(argv0: &Path) -> Mode {
    match argv0.file_name().and_then(|n| n.to_str()) {
        Some(name) if name.starts_with("felix-ipam") => Mode::Ipam,
        _ => Mode::Interface,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn run_with(pairs: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(Mode::Interface, |k| map.get(k).cloned(), stdin.as_bytes())
    }

    #[test]
    fn version_answers_in_the_version_asked() {
        let out = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        let Outcome::Success(Some(json)) = out else {
            panic!("{out:?}")
        };
        assert_eq!(json["cniVersion"], "0.4.0");
        assert_eq!(json["supportedVersions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn check_in_0_3_1_is_code_1() {
        let out = run_with(
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_NETNS", "/var/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ],
            r#"{"cniVersion":"0.3.1","name":"n","type":"felix-cni"}"#,
        );
        let Outcome::Failure(e, v) = out else {
            panic!("{out:?}")
        };
        assert_eq!(e.code.code(), 1);
        assert_eq!(v, CniVersion::V0_3_1);
    }

    #[test]
    fn status_without_agent_is_code_50() {
        let out = run_with(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.1.0","name":"n","type":"felix-cni","agent_socket":"/nonexistent/x.sock"}"#,
        );
        let Outcome::Failure(e, _) = out else {
            panic!("{out:?}")
        };
        assert_eq!(e.code.code(), 50);
        assert!(e.msg.contains("/nonexistent/x.sock"), "{}", e.msg);
    }

    #[test]
    fn mode_follows_the_binary_name() {
        assert_eq!(mode_for(Path::new("/opt/cni/bin/felix-ipam")), Mode::Ipam);
        assert_eq!(
            mode_for(Path::new("/opt/cni/bin/felix-cni")),
            Mode::Interface
        );
    }

    #[test]
    fn prev_result_mismatch_is_reported_both_ways() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"t",
                "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.9/32"}]}}"#,
            Mode::Interface,
        )
        .unwrap();
        let problems = prev_result_problems(&conf, &["10.0.0.1/26".parse().unwrap()]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("10.0.0.1 is allocated")));
        assert!(problems
            .iter()
            .any(|p| p.contains("10.0.0.9 is in prevResult")));
    }
}
