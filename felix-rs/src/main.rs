//! `felix`: the felix-rs command line.
//!
//! Exit codes: 0 when everything decoded, 1 when a message had an error,
//! 2 for usage and I/O errors.

use anyhow::Context;
use bgp::wire::{AddPathFamilies, Family, SessionParams};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use felix_rs::decode::{self, Tally};
use felix_rs::pcap;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "felix",
    version,
    about = "felix-rs node agent and operator tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// BGP tools: `felix bgp decode` shows what a peer sent, as JSON lines.
    #[command(subcommand)]
    Bgp(BgpCommand),
}

#[derive(Subcommand)]
enum BgpCommand {
    /// Decode BGP messages from a file or capture; print one JSON object per message.
    Decode(DecodeArgs),
}

#[derive(Args)]
struct DecodeArgs {
    /// FILE is a pcap/pcapng capture: decode every TCP stream to or from port 179.
    #[arg(long)]
    pcap: bool,
    /// Decode AS numbers as 4 octets (with --pcap: until both OPENs are seen).
    #[arg(long)]
    four_octet_as: bool,
    /// NLRI of FAMILY carry ADD-PATH path identifiers (ipv4-unicast, ipv6-unicast,
    /// ipv4-multicast, ipv6-multicast); repeat or separate with commas.
    #[arg(long, value_name = "FAMILY", value_delimiter = ',', value_parser = decode::parse_add_path_family)]
    add_path: Vec<Family>,
    /// Allow messages up to 65535 bytes (RFC 8654).
    #[arg(long)]
    extended_message: bool,
    /// Raw concatenated BGP messages (or a capture with --pcap); `-` reads stdin.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

impl DecodeArgs {
    fn session_params(&self) -> SessionParams {
        let add_path = self
            .add_path
            .iter()
            .fold(AddPathFamilies::default(), |set, family| set.with(*family));
        SessionParams {
            four_octet_as: self.four_octet_as,
            extended_message: self.extended_message,
            add_path,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bgp(BgpCommand::Decode(args)) => bgp_decode(&args),
    };
    match result {
        Ok(tally) if tally.errors == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        // A reader that stopped early (`felix ... | head`) is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("felix: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn bgp_decode(args: &DecodeArgs) -> anyhow::Result<Tally> {
    let input = read_input(&args.file)?;
    let params = args.session_params();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let tally = if args.pcap {
        // Stream the lines out as the capture is walked, so that memory
        // does not grow with the capture.
        let mut tally = Tally::default();
        let mut write_error = None;
        let walked =
            pcap::visit_capture(
                &input,
                params,
                |captured| match decode::write_captured_line(&captured, &mut tally, &mut out) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        write_error = Some(e);
                        ControlFlow::Break(())
                    }
                },
            );
        if let Some(e) = write_error {
            return Err(e.into());
        }
        out.flush()?;
        walked.with_context(|| format!("reading capture {}", args.file.display()))?;
        tally
    } else {
        decode::write_stream_json(Bytes::from(input), params, &mut out)?
    };
    out.flush()?;
    Ok(tally)
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut data = Vec::new();
        io::stdin()
            .read_to_end(&mut data)
            .context("reading standard input")?;
        Ok(data)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}
