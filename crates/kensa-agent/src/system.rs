//! System facts of the host (the entity's `system`): hostname, OS, platform, architecture,
//! network interfaces…
//!
//! Asset filters and entity attributes select on these (`entity.system.arch == 'amd64'`,
//! `entity.system.platform_family == 'rhel'`), so the values follow Sensu's vocabulary: Go's
//! architecture names, gopsutil's platform and family names. Everything is read from `/proc`,
//! `/sys`, `/etc/os-release` and libc (`uname`, `gethostname`, `getifaddrs` through `nix`)
//! rather than through a system-information crate, to keep the agent small. Collection never
//! fails: a fact that cannot be read is left empty. Processes are not collected (Sensu only
//! does in its commercial build).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use kensa_types::resources::entity::{Network, NetworkInterface, System};

/// Sensu's hostname when none can be read.
const DEFAULT_HOSTNAME: &str = "unidentified-hostname";

/// Collects the host's facts. Never fails: a fact that cannot be read is left empty.
pub fn collect() -> System {
    let os_release = read("/etc/os-release")
        .or_else(|| read("/usr/lib/os-release"))
        .map(|text| parse_os_release(&text))
        .unwrap_or_default();
    let (platform, platform_family, platform_version) = platform(&os_release);
    let machine = nix::sys::utsname::uname()
        .map(|uts| uts.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    let (vm_system, vm_role) = virtualization();
    System {
        hostname: hostname(),
        os: std::env::consts::OS.to_owned(),
        platform,
        platform_family,
        platform_version,
        network: network(),
        arch: go_arch().to_owned(),
        arm_version: arm_version(&machine),
        libc_type: libc_type(),
        vm_system,
        vm_role,
        cloud_provider: String::new(),
        float_type: float_type().to_owned(),
        processes: Vec::new(),
    }
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn hostname() -> String {
    let name = nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().trim().to_owned())
        .unwrap_or_default();
    if name.is_empty() {
        DEFAULT_HOSTNAME.to_owned()
    } else {
        name
    }
}

/// `KEY=value` lines of os-release, with quotes removed.
fn parse_os_release(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            (key.trim().to_owned(), value.to_owned())
        })
        .collect()
}

/// (platform, platform_family, platform_version) with gopsutil's names.
fn platform(os_release: &HashMap<String, String>) -> (String, String, String) {
    let id = os_release.get("ID").map(String::as_str).unwrap_or_default();
    let platform = match id {
        "rhel" => "redhat",
        "ol" => "oracle",
        "amzn" => "amazon",
        "sles" | "sled" => "suse",
        other => other,
    };
    let family = family_of(platform)
        .or_else(|| {
            // Derivatives name their parents in ID_LIKE (`ID_LIKE="rhel centos fedora"`).
            os_release
                .get("ID_LIKE")?
                .split_whitespace()
                .find_map(|like| family_of(like).or((like == "rhel").then_some("rhel")))
        })
        .unwrap_or_default();
    let version = os_release.get("VERSION_ID").cloned().unwrap_or_default();
    (platform.to_owned(), family.to_owned(), version)
}

fn family_of(platform: &str) -> Option<&'static str> {
    Some(match platform {
        "debian" | "ubuntu" | "linuxmint" | "raspbian" => "debian",
        "fedora" => "fedora",
        "oracle" | "centos" | "redhat" | "scientific" | "amazon" | "xenserver" | "cloudlinux"
        | "rocky" | "almalinux" => "rhel",
        "suse" | "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" | "sle_hpc" => "suse",
        "gentoo" => "gentoo",
        "slackware" => "slackware",
        "arch" => "arch",
        "exherbo" => "exherbo",
        "alpine" => "alpine",
        "coreos" => "coreos",
        "solus" => "solus",
        _ => return None,
    })
}

/// The architecture the agent was built for, in Go's `GOARCH` names (what Sensu reports).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "mips" if cfg!(target_endian = "little") => "mipsle",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Sensu reports `GOARM` (5, 6 or 7) on 32-bit ARM; the closest fact here is the machine name
/// (`armv7l`).
fn arm_version(machine: &str) -> i32 {
    if go_arch() != "arm" {
        return 0;
    }
    machine
        .strip_prefix("armv")
        .and_then(|rest| rest.chars().next())
        .and_then(|digit| digit.to_digit(10))
        .map_or(0, |digit| digit as i32)
}

/// Sensu reports `GOMIPS` on MIPS only.
fn float_type() -> &'static str {
    if go_arch().starts_with("mips") {
        if cfg!(target_feature = "soft-float") {
            "softfloat"
        } else {
            "hardfloat"
        }
    } else {
        ""
    }
}

/// The host's C library, from its dynamic loader (`ld-musl-*` or glibc's `ld-linux*`); Sensu
/// ran `ldd --version`, which costs a process per refresh.
fn libc_type() -> String {
    let mut glibc = false;
    for dir in ["/lib", "/lib64", "/usr/lib", "/usr/lib64"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("ld-musl-") {
                return "musl".to_owned();
            }
            if name.starts_with("ld-linux") || name == "libc.so.6" || name.ends_with("-linux-gnu") {
                glibc = true;
            }
        }
    }
    if glibc || cfg!(target_env = "gnu") {
        "glibc".to_owned()
    } else if cfg!(target_env = "musl") {
        "musl".to_owned()
    } else {
        String::new()
    }
}

/// (vm_system, vm_role), with gopsutil's names where they are cheap to tell: containers from
/// their marker files and cgroups, hypervisors from the DMI vendor when the CPU says it runs
/// under one, a KVM host from its module.
fn virtualization() -> (String, String) {
    let guest = |system: &str| (system.to_owned(), "guest".to_owned());
    if Path::new("/.dockerenv").exists() {
        return guest("docker");
    }
    if Path::new("/run/.containerenv").exists() {
        return guest("podman");
    }
    if let Ok(environ) = std::fs::read("/proc/1/environ") {
        for var in environ.split(|byte| *byte == 0) {
            if let Some(kind) = var.strip_prefix(b"container=") {
                return guest(&String::from_utf8_lossy(kind));
            }
        }
    }
    if let Some(cgroup) = read("/proc/self/cgroup") {
        for (marker, system) in [("docker", "docker"), ("kubepods", "docker"), ("lxc", "lxc")] {
            if cgroup.contains(marker) {
                return guest(system);
            }
        }
    }
    let under_hypervisor = read("/proc/cpuinfo").is_some_and(|cpuinfo| {
        cpuinfo.lines().any(|line| {
            line.starts_with("flags") && line.split_whitespace().any(|f| f == "hypervisor")
        })
    });
    if under_hypervisor {
        let vendor = read("/sys/class/dmi/id/sys_vendor").unwrap_or_default();
        let product = read("/sys/class/dmi/id/product_name").unwrap_or_default();
        let dmi = format!("{vendor} {product}").to_ascii_lowercase();
        let system = if dmi.contains("vmware") {
            "vmware"
        } else if dmi.contains("virtualbox") || dmi.contains("innotek") {
            "vbox"
        } else if dmi.contains("xen") {
            "xen"
        } else if dmi.contains("microsoft") {
            "hyperv"
        } else {
            // QEMU, KVM, cloud hypervisors built on KVM (Amazon EC2, Google) and unknown ones.
            "kvm"
        };
        return guest(system);
    }
    if read("/proc/modules").is_some_and(|modules| modules.lines().any(|m| m.starts_with("kvm "))) {
        return ("kvm".to_owned(), "host".to_owned());
    }
    (String::new(), String::new())
}

/// Every interface with its MAC and `address/prefix` list, in the order `getifaddrs` lists
/// them.
fn network() -> Network {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Network::default();
    };
    let mut interfaces: Vec<NetworkInterface> = Vec::new();
    for entry in addresses {
        let index = match interfaces
            .iter()
            .position(|interface| interface.name == entry.interface_name)
        {
            Some(index) => index,
            None => {
                interfaces.push(NetworkInterface {
                    name: entry.interface_name.clone(),
                    ..NetworkInterface::default()
                });
                interfaces.len() - 1
            }
        };
        let interface = &mut interfaces[index];
        let Some(address) = entry.address else {
            continue;
        };
        if let Some(link) = address.as_link_addr() {
            if let Some(mac) = link.addr().filter(|mac| mac.iter().any(|byte| *byte != 0)) {
                interface.mac = mac
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            continue;
        }
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let prefix = entry.netmask.as_ref().map_or(0, |mask| {
            if let Some(v4) = mask.as_sockaddr_in() {
                u32::from(v4.ip()).count_ones()
            } else if let Some(v6) = mask.as_sockaddr_in6() {
                u128::from(v6.ip()).count_ones()
            } else {
                0
            }
        });
        interface.addresses.push(format!("{ip}/{prefix}"));
    }
    Network { interfaces }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_facts_are_known() {
        let system = collect();
        assert!(!system.hostname.is_empty());
        assert_eq!(system.os, "linux");
        assert!(!system.arch.is_empty());
        assert_ne!(system.arch, "x86_64", "arch uses Go's names");
        assert!(system.processes.is_empty());
    }

    #[test]
    fn loopback_is_listed_with_its_prefix() {
        let system = collect();
        let lo = system
            .network
            .interfaces
            .iter()
            .find(|interface| interface.name == "lo")
            .unwrap_or_else(|| panic!("no lo in {:?}", system.network.interfaces));
        assert!(
            lo.addresses.iter().any(|address| address == "127.0.0.1/8"),
            "lo addresses: {:?}",
            lo.addresses
        );
        assert_eq!(lo.mac, "", "loopback has no hardware address");
    }

    #[test]
    fn os_release_gives_platform_and_family() {
        let cases = [
            (
                "ID=ubuntu\nVERSION_ID=\"22.04\"\n",
                ("ubuntu", "debian", "22.04"),
            ),
            (
                "ID=\"rhel\"\nVERSION_ID=\"9.3\"\n",
                ("redhat", "rhel", "9.3"),
            ),
            (
                "ID=rocky\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=9.2",
                ("rocky", "rhel", "9.2"),
            ),
            (
                "ID=pop\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=22.04",
                ("pop", "debian", "22.04"),
            ),
            (
                "ID=alpine\nVERSION_ID=3.19.1\n",
                ("alpine", "alpine", "3.19.1"),
            ),
            ("ID=amzn\nVERSION_ID='2023'\n", ("amazon", "rhel", "2023")),
            ("ID=weird\n", ("weird", "", "")),
            ("", ("", "", "")),
        ];
        for (text, (platform_name, family, version)) in cases {
            let (p, f, v) = platform(&parse_os_release(text));
            assert_eq!(
                (p.as_str(), f.as_str(), v.as_str()),
                (platform_name, family, version),
                "{text:?}"
            );
        }
    }
}
