//! arbor's wire protocols, compiled once for both sides.
//!
//! The `.proto` files under `proto/` are the contract; this crate holds the code generated from them (by
//! `build.rs`, with the pure-Rust compiler protox, so building needs nothing but cargo) and the few conversions
//! both sides share:
//!
//! - [`tunnel::v1`]: the generated messages and enums of package `arbor.tunnel.v1`, the tonic client
//!   `tunnel_service_client::TunnelServiceClient` (feature `client`, on by default) and the server trait
//!   `tunnel_service_server::TunnelService` with `TunnelServiceServer` (feature `server`).
//! - [`tunnel::domain`]: domain types converted from the generated ones ([`ChannelStatus`](tunnel::domain::ChannelStatus),
//!   [`ChannelType`](tunnel::domain::ChannelType), the [`Version`](tunnel::domain::Version) newtype,
//!   [`ChannelState`](tunnel::domain::ChannelState)), and [`route_key`](tunnel::domain::route_key), the routing
//!   hash of key-routed appends.
//! - [`tunnel::error`]: the [`ErrorKind`](tunnel::error::ErrorKind) a client acts on, read from a
//!   [`tonic::Status`] without parsing its message, and the metadata keys that carry it.
//! - [`inspect::v1`]: package `arbor.inspect.v1`, the introspection protocol of a running tree (GetTree, GetNode,
//!   ListRegistry, WatchEvents): messages, `inspect_service_client::InspectServiceClient` (feature `client`) and
//!   `inspect_service_server::InspectService` with `InspectServiceServer` (feature `server`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every file, for gRPC server reflection.
//!
//! ```
//! use arbor_proto::tunnel::error::ErrorKind;
//! use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
//!
//! # fn client(channel: tonic::transport::Channel) {
//! let client = TunnelServiceClient::new(channel);
//! # }
//! // Any status a call returns tells what to do next:
//! let status = tonic::Status::aborted("channel 3: version 7 is stale (current 9)");
//! assert_eq!(ErrorKind::of(&status), ErrorKind::OwnershipLost);
//! ```

/// The tunnel protocol, `arbor/tunnel/v1/tunnel.proto`.
pub mod tunnel {
    /// Generated code of package `arbor.tunnel.v1`: messages, enums, client and server stubs.
    #[allow(clippy::all, missing_docs, rustdoc::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/arbor.tunnel.v1.rs"));
    }

    pub mod domain;
    pub mod error;
}

/// The introspection protocol, `arbor/inspect/v1/inspect.proto`.
pub mod inspect {
    /// Generated code of package `arbor.inspect.v1`: messages, enums, client and server stubs.
    #[allow(clippy::all, missing_docs, rustdoc::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/arbor.inspect.v1.rs"));
    }
}

/// The encoded `FileDescriptorSet` of every arbor `.proto` file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/arbor_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn the_descriptor_set_describes_the_inspect_service() {
        let set = prost_types_lite::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let file = set
            .file
            .iter()
            .find(|f| f.name.as_deref() == Some("arbor/inspect/v1/inspect.proto"));
        let file = file.expect("inspect.proto is in the set");
        assert_eq!(file.package.as_deref(), Some("arbor.inspect.v1"));
        assert!(file
            .service
            .iter()
            .any(|s| s.name.as_deref() == Some("InspectService")));
    }

    #[test]
    fn the_descriptor_set_describes_the_tunnel_service() {
        let set = prost_types_lite::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let file = set
            .file
            .iter()
            .find(|f| f.name.as_deref() == Some("arbor/tunnel/v1/tunnel.proto"));
        let file = file.expect("tunnel.proto is in the set");
        assert_eq!(file.package.as_deref(), Some("arbor.tunnel.v1"));
        assert!(file
            .service
            .iter()
            .any(|s| s.name.as_deref() == Some("TunnelService")));
    }

    /// Just enough of `google.protobuf.FileDescriptorSet` to check the embedded bytes (prost-types is not a
    /// dependency of this crate).
    mod prost_types_lite {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            pub file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct FileDescriptorProto {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
            #[prost(string, optional, tag = "2")]
            pub package: Option<String>,
            #[prost(message, repeated, tag = "6")]
            pub service: Vec<ServiceDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct ServiceDescriptorProto {
            #[prost(string, optional, tag = "1")]
            pub name: Option<String>,
        }
    }
}
