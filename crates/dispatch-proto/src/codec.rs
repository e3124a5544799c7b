//! The protobuf codec every generated client and server uses: prost's, with
//! small starting buffers.
//!
//! tonic starts each stream with an 8 KiB decode buffer and an 8 KiB encode
//! buffer. A server holding 50,000 driver sessions would spend 800 MiB on
//! buffers that mostly carry 40-byte pings; these start at 512 bytes and
//! grow as a message needs (a fleet batch grows its own).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes a stream's buffers start with.
pub const START_BUFFER_BYTES: usize = 512;
/// Bytes encoded before a stream yields to the runtime (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// prost's codec with [`START_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(START_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
