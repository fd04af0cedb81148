//! Compressed runs of samples of one series (Gorilla-style, byte aligned).
//!
//! The first sample is kept whole in the header; every later one is the zig-zag varint of
//! its timestamp's delta-of-delta (0, one byte, at a steady scrape interval) followed by the
//! varint of the XOR with the previous value's bits, bit-reversed so that the trailing zeros
//! of slowly moving values become leading ones the varint drops (an unchanged value is one
//! byte, a counter growing by small integers two or three). A steady series costs about
//! 2-4 bytes a sample.

/// Samples per chunk before it is closed (as Prometheus: 120, i.e. 30 min at 15 s).
pub const CHUNK_SAMPLES: u16 = 120;

#[derive(Debug, Clone)]
pub struct Chunk {
    pub min_t: i64,
    pub max_t: i64,
    n: u16,
    first_v: u64,
    last_v: u64,
    last_delta: i64,
    data: Vec<u8>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *data.get(*pos)?;
        *pos += 1;
        if shift >= 64 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl Chunk {
    pub fn new(t: i64, v: f64) -> Chunk {
        Chunk {
            min_t: t,
            max_t: t,
            n: 1,
            first_v: v.to_bits(),
            last_v: v.to_bits(),
            last_delta: 0,
            data: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.n as usize
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn is_full(&self) -> bool {
        self.n >= CHUNK_SAMPLES
    }

    /// Appends a sample later than `max_t` (the caller drops out-of-order ones).
    pub fn push(&mut self, t: i64, v: f64) {
        let delta = t - self.max_t;
        put_varint(&mut self.data, zigzag(delta - self.last_delta));
        put_varint(&mut self.data, (v.to_bits() ^ self.last_v).reverse_bits());
        self.last_delta = delta;
        self.last_v = v.to_bits();
        self.max_t = t;
        self.n += 1;
    }

    /// Gives back spare capacity once the chunk will take no more samples.
    pub fn seal(&mut self) {
        self.data.shrink_to_fit();
    }

    pub fn last_value(&self) -> f64 {
        f64::from_bits(self.last_v)
    }

    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter {
            chunk: self,
            pos: 0,
            i: 0,
            t: self.min_t,
            delta: 0,
            v: self.first_v,
        }
    }

    /// Heap and inline bytes this chunk holds.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Chunk>() + self.data.capacity()
    }

    /// Serialised form for block files: header fields then the encoded samples.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, zigzag(self.min_t));
        put_varint(out, zigzag(self.max_t));
        put_varint(out, u64::from(self.n));
        out.extend_from_slice(&self.first_v.to_le_bytes());
        out.extend_from_slice(&self.last_v.to_le_bytes());
        put_varint(out, zigzag(self.last_delta));
        put_varint(out, self.data.len() as u64);
        out.extend_from_slice(&self.data);
    }

    /// Moves `pos` past one encoded chunk.
    pub fn skip(data: &[u8], pos: &mut usize) -> Option<()> {
        for _ in 0..3 {
            get_varint(data, pos)?;
        }
        *pos += 16;
        get_varint(data, pos)?;
        let len = usize::try_from(get_varint(data, pos)?).ok()?;
        *pos = pos.checked_add(len).filter(|p| *p <= data.len())?;
        Some(())
    }

    pub fn decode(data: &[u8], pos: &mut usize) -> Option<Chunk> {
        let min_t = unzigzag(get_varint(data, pos)?);
        let max_t = unzigzag(get_varint(data, pos)?);
        let n = u16::try_from(get_varint(data, pos)?).ok()?;
        let first_v = u64::from_le_bytes(data.get(*pos..*pos + 8)?.try_into().ok()?);
        let last_v = u64::from_le_bytes(data.get(*pos + 8..*pos + 16)?.try_into().ok()?);
        *pos += 16;
        let last_delta = unzigzag(get_varint(data, pos)?);
        let len = usize::try_from(get_varint(data, pos)?).ok()?;
        let bytes = data.get(*pos..*pos + len)?.to_vec();
        *pos += len;
        Some(Chunk {
            min_t,
            max_t,
            n,
            first_v,
            last_v,
            last_delta,
            data: bytes,
        })
    }
}

pub struct ChunkIter<'a> {
    chunk: &'a Chunk,
    pos: usize,
    i: u16,
    t: i64,
    delta: i64,
    v: u64,
}

impl Iterator for ChunkIter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.i >= self.chunk.n {
            return None;
        }
        if self.i > 0 {
            let d = &self.chunk.data;
            let dod = unzigzag(get_varint(d, &mut self.pos)?);
            let x = get_varint(d, &mut self.pos)?.reverse_bits();
            self.delta += dod;
            self.t += self.delta;
            self.v ^= x;
        }
        self.i += 1;
        Some((self.t, f64::from_bits(self.v)))
    }
}

pub(crate) fn write_varint(out: &mut Vec<u8>, v: u64) {
    put_varint(out, v)
}

pub(crate) fn read_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    get_varint(data, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let mut samples = vec![(1_000_000i64, 0.0f64)];
        let mut c = Chunk::new(1_000_000, 0.0);
        for i in 1..CHUNK_SAMPLES as i64 {
            // Jittered 15 s scrapes of a counter and one NaN.
            let t = 1_000_000 + i * 15_000 + (i % 3) - 1;
            let v = if i == 50 { f64::NAN } else { (i * 37) as f64 };
            c.push(t, v);
            samples.push((t, v));
        }
        assert!(c.is_full());
        let got: Vec<(i64, f64)> = c.iter().collect();
        assert_eq!(got.len(), samples.len());
        for (a, b) in got.iter().zip(&samples) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits());
        }
        c.seal();
        assert!(
            c.data.len() < 6 * CHUNK_SAMPLES as usize,
            "{}",
            c.data.len()
        );
        let mut buf = Vec::new();
        c.encode(&mut buf);
        let mut pos = 0;
        let d = Chunk::decode(&buf, &mut pos).unwrap();
        assert_eq!(pos, buf.len());
        assert_eq!(d.iter().count(), samples.len());
        assert_eq!(d.max_t, c.max_t);
    }

    #[test]
    fn constant_values_cost_two_bytes() {
        let mut c = Chunk::new(0, 42.5);
        for i in 1..100 {
            c.push(i * 15_000, 42.5);
        }
        assert_eq!(c.data.len(), 2 * 99 + 2); // the first delta is not a zero delta-of-delta
    }
}
