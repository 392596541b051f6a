//! Hand-built frames: Ethernet, up to any number of VLAN tags, IPv4 (with
//! options) or IPv6, and a UDP, TCP or ICMP payload. Checksums are correct
//! although the XDP program never reads them.

use std::net::IpAddr;

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_HDR_LEN: usize = 4;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// The transport part of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    /// A SYN.
    Tcp {
        sport: u16,
        dport: u16,
    },
    /// An echo request (ICMP or ICMPv6 after the IP version).
    Icmp {
        id: u16,
        seq: u16,
    },
}

/// A frame to build.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (padded with zeros to a multiple of four bytes); ignored
    /// for IPv6.
    pub ipv4_options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

/// A built frame and where its headers start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header: the frame's Ethernet, VLAN and IP
    /// headers end here (all the XDP program needs to decide).
    pub l4: usize,
}

impl Frame {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The first `len` bytes.
    pub fn truncated(&self, len: usize) -> Vec<u8> {
        self.bytes[..len].to_vec()
    }
}

impl FrameSpec {
    /// A UDP datagram with a 32-byte payload and no VLAN tag.
    pub fn udp(src: IpAddr, dst: IpAddr) -> Self {
        Self {
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlans: Vec::new(),
            src,
            dst,
            ipv4_options: Vec::new(),
            l4: L4::Udp {
                sport: 40000,
                dport: 5353,
            },
            payload: vec![0xab; 32],
        }
    }

    pub fn tcp_syn(src: IpAddr, dst: IpAddr) -> Self {
        Self {
            l4: L4::Tcp {
                sport: 40001,
                dport: 443,
            },
            payload: Vec::new(),
            ..Self::udp(src, dst)
        }
    }

    pub fn icmp_echo(src: IpAddr, dst: IpAddr) -> Self {
        Self {
            l4: L4::Icmp { id: 7, seq: 1 },
            payload: vec![0x5a; 56],
            ..Self::udp(src, dst)
        }
    }

    /// One 802.1Q tag.
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans = vec![(ETH_P_8021Q, id)];
        self
    }

    /// QinQ: an 802.1ad outer tag and an 802.1Q inner tag.
    pub fn qinq(mut self, outer: u16, inner: u16) -> Self {
        self.vlans = vec![(ETH_P_8021AD, outer), (ETH_P_8021Q, inner)];
        self
    }

    /// `depth` tags: none, 802.1Q, 802.1ad + 802.1Q, then more 802.1Q.
    pub fn vlan_depth(mut self, depth: usize) -> Self {
        self.vlans = (0..depth)
            .map(|i| {
                let tpid = if depth >= 2 && i == 0 {
                    ETH_P_8021AD
                } else {
                    ETH_P_8021Q
                };
                (tpid, 100 + i as u16)
            })
            .collect();
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        self
    }

    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload = vec![0xab; len];
        self
    }

    pub fn build(&self) -> Frame {
        let mut bytes = Vec::with_capacity(128 + self.payload.len());
        bytes.extend_from_slice(&self.dst_mac);
        bytes.extend_from_slice(&self.src_mac);
        for (tpid, id) in &self.vlans {
            bytes.extend_from_slice(&tpid.to_be_bytes());
            bytes.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        let (ethertype, icmp_type, icmp_proto) = match self.dst {
            IpAddr::V4(_) => (ETH_P_IPV4, 8, IPPROTO_ICMP),
            IpAddr::V6(_) => (ETH_P_IPV6, 128, IPPROTO_ICMPV6),
        };
        bytes.extend_from_slice(&ethertype.to_be_bytes());
        let (protocol, mut transport) = match &self.l4 {
            L4::Udp { sport, dport } => {
                let mut t = Vec::new();
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                t.extend_from_slice(&[0, 0]);
                (IPPROTO_UDP, t)
            }
            L4::Tcp { sport, dport } => {
                let mut t = Vec::new();
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&1u32.to_be_bytes()); // sequence
                t.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
                t.extend_from_slice(&[5 << 4, 0x02]); // data offset 5, SYN
                t.extend_from_slice(&64240u16.to_be_bytes()); // window
                t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                (IPPROTO_TCP, t)
            }
            L4::Icmp { id, seq } => {
                let mut t = vec![icmp_type, 0, 0, 0];
                t.extend_from_slice(&id.to_be_bytes());
                t.extend_from_slice(&seq.to_be_bytes());
                (icmp_proto, t)
            }
        };
        transport.extend_from_slice(&self.payload);
        let l3 = bytes.len();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut options = self.ipv4_options.clone();
                options.resize(options.len().div_ceil(4) * 4, 0);
                let header_len = 20 + options.len();
                assert!(header_len <= 60, "IPv4 options too long");
                let total = (header_len + transport.len()) as u16;
                let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&options);
                let sum = checksum(&[&ip]);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                let pseudo = [
                    &src.octets()[..],
                    &dst.octets()[..],
                    &[0, protocol],
                    &(transport.len() as u16).to_be_bytes(),
                ]
                .concat();
                fill_l4_checksum(&mut transport, &self.l4, protocol, &pseudo);
                bytes.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(transport.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[protocol, 64]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                let pseudo = [
                    &src.octets()[..],
                    &dst.octets()[..],
                    &(transport.len() as u32).to_be_bytes(),
                    &[0, 0, 0, protocol],
                ]
                .concat();
                fill_l4_checksum(&mut transport, &self.l4, protocol, &pseudo);
                bytes.extend_from_slice(&ip);
            }
            (src, dst) => panic!("mixed address families: {src} -> {dst}"),
        }
        let l4 = bytes.len();
        bytes.extend_from_slice(&transport);
        Frame { bytes, l3, l4 }
    }
}

fn fill_l4_checksum(transport: &mut [u8], l4: &L4, protocol: u8, pseudo: &[u8]) {
    let at = match l4 {
        L4::Udp { .. } => 6,
        L4::Tcp { .. } => 16,
        L4::Icmp { .. } => 2,
    };
    // ICMPv4 has no pseudo-header; UDP, TCP and ICMPv6 do.
    let sum = if protocol == IPPROTO_ICMP {
        checksum(&[transport])
    } else {
        checksum(&[pseudo, &*transport])
    };
    // A computed UDP checksum of 0 is sent as 0xffff.
    let sum = if protocol == IPPROTO_UDP && sum == 0 {
        0xffff
    } else {
        sum
    };
    transport[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ARP request (who-has `target` tell `sender`), optionally VLAN-tagged.
pub fn arp_request(sender: [u8; 4], target: [u8; 4], vlans: &[(u16, u16)]) -> Vec<u8> {
    let mut bytes = vec![0xff; 6];
    bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    for (tpid, id) in vlans {
        bytes.extend_from_slice(&tpid.to_be_bytes());
        bytes.extend_from_slice(&id.to_be_bytes());
    }
    bytes.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    bytes.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    bytes.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    bytes.extend_from_slice(&sender);
    bytes.extend_from_slice(&[0; 6]);
    bytes.extend_from_slice(&target);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let frame = FrameSpec::udp("192.0.2.1".parse().unwrap(), "203.0.113.7".parse().unwrap())
            .ipv4_options(&[1, 1, 1])
            .build();
        assert_eq!(frame.l4 - frame.l3, 24);
        assert_eq!(checksum(&[&frame.bytes[frame.l3..frame.l4]]), 0);
        assert_eq!(frame.bytes[frame.l3], 0x46);
    }

    #[test]
    fn layout_with_two_tags() {
        let frame = FrameSpec::tcp_syn(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
        .qinq(10, 20)
        .build();
        assert_eq!(frame.l3, ETH_HDR_LEN + 2 * VLAN_HDR_LEN);
        assert_eq!(frame.l4, frame.l3 + 40);
        assert_eq!(frame.len(), frame.l4 + 20);
        assert_eq!(&frame.bytes[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&frame.bytes[20..22], &ETH_P_IPV6.to_be_bytes());
    }
}
