//! A body that lets a closure see each frame as it streams past, without buffering or changing
//! it. The gate counts request bytes with it, the HTTP upstream notes activity for its idle
//! timeout: one wrapper instead of a near-copy per concern.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// `inner`, with `on_frame` called for every frame that arrives.
pub struct Observed<B, F> {
    inner: B,
    on_frame: F,
}

impl<B, F> Observed<B, F> {
    pub fn new(inner: B, on_frame: F) -> Self {
        Observed { inner, on_frame }
    }
}

impl<B, F> Body for Observed<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnMut(&Frame<Bytes>) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            (this.on_frame)(frame);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn sees_every_frame_and_passes_it_on() {
        let mut seen = 0;
        let body = Observed::new(
            Full::new(Bytes::from_static(b"hello")),
            |f: &Frame<Bytes>| {
                seen += f.data_ref().map_or(0, |d| d.len());
            },
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
        assert_eq!(seen, 5);
    }
}
