//! The rolling window: a ring of sparse HDR-histogram slices.
//!
//! A window of `5m` kept as `10s` slices holds at most 30 slices per series;
//! data leaves the window one whole slice at a time, exactly when the slice's
//! end is `window` in the past. Each slice stores only the HDR buckets it
//! actually hit, as sorted `(bucket, count)` pairs, using the bucket layout of
//! an HDR histogram ([`BucketLayout`], identical to the `hdrhistogram` crate's).
//! A dense 2-digit histogram over 1 µs..1 h is 3 328 counters (26 KB with
//! `u64`); a slice of a typical service hits a few dozen to a few hundred of
//! them, so the sparse form is 10 to 100 times smaller, and an idle series
//! holds no slice at all.
//!
//! Memory per series: 32 bytes for the ring, plus per live slice 48 bytes and
//! 8 bytes per distinct bucket hit in it. Quantiles are computed on demand by
//! merging the live slices into one dense `hdrhistogram` scratch histogram
//! shared by every series of a processor.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::proto::{RollingHistogramState, SliceState};

/// The bucket layout of an HDR histogram with lowest discernible value 1,
/// the given highest trackable value and precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLayout {
    sub_bucket_half_count_magnitude: u32,
    sub_bucket_half_count: u64,
    sub_bucket_mask: u64,
    leading_zero_count_base: u32,
    highest: u64,
    significant_digits: u8,
    len: usize,
}

impl BucketLayout {
    /// The layout for values `1..=highest` with `significant_digits` (1 to 3)
    /// decimal digits of precision.
    pub fn new(significant_digits: u8, highest: u64) -> Self {
        let significant_digits = significant_digits.clamp(1, 3);
        let highest = highest.max(2);
        let largest_single_unit = 2 * 10u64.pow(u32::from(significant_digits));
        let sub_bucket_count_magnitude = 64 - (largest_single_unit - 1).leading_zeros();
        let sub_bucket_half_count_magnitude = sub_bucket_count_magnitude.max(1) - 1;
        let sub_bucket_count = 1u64 << (sub_bucket_half_count_magnitude + 1);
        let sub_bucket_half_count = sub_bucket_count / 2;
        let mut smallest_untrackable = sub_bucket_count;
        let mut bucket_count = 1usize;
        while smallest_untrackable <= highest {
            smallest_untrackable <<= 1;
            bucket_count += 1;
        }
        BucketLayout {
            sub_bucket_half_count_magnitude,
            sub_bucket_half_count,
            sub_bucket_mask: sub_bucket_count - 1,
            leading_zero_count_base: 64 - sub_bucket_half_count_magnitude - 1,
            highest,
            significant_digits,
            len: (bucket_count + 1) * sub_bucket_half_count as usize,
        }
    }

    /// Number of buckets (the length of a dense histogram's counts array).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a layout has buckets.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Highest value told apart; larger values are counted as this.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// The bucket of `value` (clamped to the highest trackable value).
    #[inline]
    pub fn index_of(&self, value: u64) -> u16 {
        let value = value.min(self.highest);
        let bucket = self.leading_zero_count_base - (value | self.sub_bucket_mask).leading_zeros();
        let sub_bucket = value >> bucket;
        let index = ((u64::from(bucket) + 1) << self.sub_bucket_half_count_magnitude) + sub_bucket
            - self.sub_bucket_half_count;
        // A layout has at most 23 552 buckets (3 digits over a day), so u16 holds it.
        index as u16
    }

    /// The lowest value that falls in bucket `index`.
    #[inline]
    pub fn value_at(&self, index: u16) -> u64 {
        let index = u64::from(index);
        let mut bucket = (index >> self.sub_bucket_half_count_magnitude) as i64 - 1;
        let mut sub_bucket =
            (index & (self.sub_bucket_half_count - 1)) + self.sub_bucket_half_count;
        if bucket < 0 {
            sub_bucket -= self.sub_bucket_half_count;
            bucket = 0;
        }
        sub_bucket << bucket
    }

    /// A dense histogram of this layout, to merge slices into.
    pub fn dense(&self) -> Histogram<u64> {
        // `new` clamped digits to 1..=3 and highest to >= 2, the only bounds
        // `new_with_bounds` can refuse with a low of 1.
        Histogram::new_with_bounds(1, self.highest, self.significant_digits)
            .expect("bounds clamped in BucketLayout::new")
    }
}

/// The window's length and granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShape {
    slice_ns: u64,
    slices: u64,
}

impl WindowShape {
    /// A window of `slices` slices of `slice` each.
    pub fn new(window: Duration, slice: Duration) -> Self {
        let slice_ns = (slice.as_nanos() as u64).max(1);
        let slices = ((window.as_nanos() as u64) / slice_ns).max(1);
        WindowShape { slice_ns, slices }
    }

    /// Length of one slice, in nanoseconds.
    pub fn slice_ns(&self) -> u64 {
        self.slice_ns
    }

    /// How many slices the window holds.
    pub fn slices(&self) -> u64 {
        self.slices
    }

    fn epoch(&self, now_ns: u64) -> u64 {
        now_ns / self.slice_ns
    }

    /// Whether a slice is still in the window whose current slice is `current`.
    fn is_live(&self, slice_epoch: u64, current: u64) -> bool {
        slice_epoch + self.slices > current
    }
}

/// One slice: requests, errors and the sparse latency buckets hit.
#[derive(Debug, Clone, Default)]
struct Slice {
    epoch: u64,
    requests: u64,
    errors: u64,
    /// `(bucket index, count)`, sorted by bucket index.
    buckets: Vec<(u16, u32)>,
}

impl Slice {
    #[inline]
    fn record(&mut self, bucket: u16) {
        match self.buckets.binary_search_by_key(&bucket, |&(b, _)| b) {
            Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
            Err(i) => self.buckets.insert(i, (bucket, 1)),
        }
    }
}

/// Requests, errors and latency of one series over a rolling window.
#[derive(Debug, Clone, Default)]
pub struct RollingHistogram {
    /// Live slices, oldest first; only slices that received data exist.
    slices: VecDeque<Slice>,
}

/// A window's figures at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct WindowStats {
    /// Requests in the window.
    pub requests: u64,
    /// Errors in the window.
    pub errors: u64,
    /// Latency quantiles in microseconds (`None` without requests): p50, p95, p99.
    pub quantiles_us: Option<[u64; 3]>,
}

impl WindowStats {
    /// Errors / requests, `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// Why a checkpointed window state cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Recorded with another window shape or precision.
    #[error(
        "the state was recorded with another window or precision ({found}) than configured ({expected})"
    )]
    LayoutMismatch {
        /// The state's layout.
        found: String,
        /// The configured layout.
        expected: String,
    },
    /// A slice is inconsistent.
    #[error("slice {epoch}: {problem}")]
    BadSlice {
        /// The slice's epoch.
        epoch: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// The quantiles reported: p50, p95, p99.
pub const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

impl RollingHistogram {
    /// Records a batch of requests at `now_ns`: their latencies in microseconds
    /// and how many were errors.
    pub fn record(
        &mut self,
        shape: &WindowShape,
        layout: &BucketLayout,
        now_ns: u64,
        latencies_us: impl ExactSizeIterator<Item = u64>,
        errors: u64,
    ) {
        let epoch = shape.epoch(now_ns);
        self.expire(shape, epoch);
        let slice = match self.slices.back_mut() {
            // A clock that stepped back records into the newest slice.
            Some(slice) if slice.epoch >= epoch => slice,
            _ => {
                self.slices.push_back(Slice {
                    epoch,
                    ..Slice::default()
                });
                self.slices.back_mut().expect("just pushed")
            }
        };
        slice.requests += latencies_us.len() as u64;
        slice.errors += errors;
        for latency in latencies_us {
            slice.record(layout.index_of(latency));
        }
    }

    /// Drops slices that left the window; returns whether any slice remains.
    pub fn expire(&mut self, shape: &WindowShape, current_epoch: u64) -> bool {
        while self
            .slices
            .front()
            .is_some_and(|s| !shape.is_live(s.epoch, current_epoch))
        {
            self.slices.pop_front();
        }
        !self.slices.is_empty()
    }

    /// Requests and errors in the window at `now_ns`, without quantiles.
    pub fn counts(&self, shape: &WindowShape, now_ns: u64) -> (u64, u64) {
        let current = shape.epoch(now_ns);
        self.slices
            .iter()
            .filter(|s| shape.is_live(s.epoch, current))
            .fold((0, 0), |(r, e), s| (r + s.requests, e + s.errors))
    }

    /// The window's figures at `now_ns`. `scratch` must be empty and of the
    /// same layout; it is left empty.
    pub fn stats(
        &self,
        shape: &WindowShape,
        layout: &BucketLayout,
        now_ns: u64,
        scratch: &mut Histogram<u64>,
    ) -> WindowStats {
        let current = shape.epoch(now_ns);
        // Live: `epoch + slices > current` (later slices included, as
        // `counts` includes them).
        let oldest = (current + 1).saturating_sub(shape.slices);
        self.stats_of(layout, oldest..u64::MAX, scratch)
    }

    /// The figures of the slices whose epochs are in `epochs` (slice
    /// `k` holds `[k × slice, (k + 1) × slice)`), live or not: the caller
    /// says which part of the window it wants (the regression check's
    /// before and after a deployment). `scratch` as for [`Self::stats`].
    pub fn stats_of(
        &self,
        layout: &BucketLayout,
        epochs: std::ops::Range<u64>,
        scratch: &mut Histogram<u64>,
    ) -> WindowStats {
        let mut stats = WindowStats {
            requests: 0,
            errors: 0,
            quantiles_us: None,
        };
        for slice in self.slices.iter().filter(|s| epochs.contains(&s.epoch)) {
            stats.requests += slice.requests;
            stats.errors += slice.errors;
            for &(bucket, count) in &slice.buckets {
                // Values come from the same layout, so they are always in range.
                let _ = scratch.record_n(layout.value_at(bucket), u64::from(count));
            }
        }
        if stats.requests > 0 {
            stats.quantiles_us = Some(QUANTILES.map(|q| scratch.value_at_quantile(q)));
            scratch.reset();
        }
        stats
    }

    /// The window's state, for a checkpoint.
    pub fn to_state(&self, shape: &WindowShape, layout: &BucketLayout) -> RollingHistogramState {
        RollingHistogramState {
            slice_ns: shape.slice_ns,
            slices_per_window: shape.slices,
            significant_digits: u32::from(layout.significant_digits),
            highest_us: layout.highest,
            slices: self
                .slices
                .iter()
                .map(|s| SliceState {
                    epoch: s.epoch,
                    requests: s.requests,
                    errors: s.errors,
                    buckets: s.buckets.iter().map(|&(b, _)| u32::from(b)).collect(),
                    counts: s.buckets.iter().map(|&(_, c)| c).collect(),
                })
                .collect(),
        }
    }

    /// Restores a window from a checkpointed state, refusing one recorded with
    /// another layout or with inconsistent slices.
    pub fn from_state(
        state: &RollingHistogramState,
        shape: &WindowShape,
        layout: &BucketLayout,
    ) -> Result<Self, StateError> {
        let describe = |slice_ns: u64, slices: u64, digits: u32, highest: u64| {
            format!("{slice_ns} ns x {slices} slices, {digits} digits up to {highest} us")
        };
        let expected = (
            shape.slice_ns,
            shape.slices,
            u32::from(layout.significant_digits),
            layout.highest,
        );
        let found = (
            state.slice_ns,
            state.slices_per_window,
            state.significant_digits,
            state.highest_us,
        );
        if found != expected {
            return Err(StateError::LayoutMismatch {
                found: describe(found.0, found.1, found.2, found.3),
                expected: describe(expected.0, expected.1, expected.2, expected.3),
            });
        }
        let mut slices = VecDeque::with_capacity(state.slices.len());
        let mut previous_epoch = None;
        for s in &state.slices {
            let bad = |problem| StateError::BadSlice {
                epoch: s.epoch,
                problem,
            };
            if previous_epoch.is_some_and(|p| p >= s.epoch) {
                return Err(bad("slices are not in increasing order"));
            }
            previous_epoch = Some(s.epoch);
            if s.buckets.len() != s.counts.len() {
                return Err(bad("buckets and counts differ in length"));
            }
            if s.errors > s.requests {
                return Err(bad("more errors than requests"));
            }
            let mut buckets = Vec::with_capacity(s.buckets.len());
            for (&bucket, &count) in s.buckets.iter().zip(&s.counts) {
                if bucket as usize >= layout.len() {
                    return Err(bad("bucket index out of range"));
                }
                if buckets.last().is_some_and(|&(b, _)| u32::from(b) >= bucket) {
                    return Err(bad("bucket indexes are not strictly increasing"));
                }
                buckets.push((bucket as u16, count));
            }
            slices.push_back(Slice {
                epoch: s.epoch,
                requests: s.requests,
                errors: s.errors,
                buckets,
            });
        }
        Ok(RollingHistogram { slices })
    }

    /// Adds `requests` and `errors` at `now_ns` without latencies (counts
    /// read from metrics): the window's counts include them, its quantiles
    /// do not.
    pub fn add_counts(&mut self, shape: &WindowShape, now_ns: u64, requests: u64, errors: u64) {
        let epoch = shape.epoch(now_ns);
        self.expire(shape, epoch);
        match self.slices.back_mut() {
            Some(slice) if slice.epoch >= epoch => {
                slice.requests += requests;
                slice.errors += errors;
            }
            _ => self.slices.push_back(Slice {
                epoch,
                requests,
                errors,
                buckets: Vec::new(),
            }),
        }
    }

    /// Heap bytes held, for the memory figures in the docs.
    pub fn heap_bytes(&self) -> usize {
        self.slices.capacity() * std::mem::size_of::<Slice>()
            + self
                .slices
                .iter()
                .map(|s| s.buckets.capacity() * std::mem::size_of::<(u16, u32)>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR_US: u64 = 3_600_000_000;

    fn shape() -> WindowShape {
        WindowShape::new(Duration::from_secs(300), Duration::from_secs(10))
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn layout_matches_the_hdrhistogram_crate() {
        for digits in 1..=3 {
            let layout = BucketLayout::new(digits, HOUR_US);
            let dense = layout.dense();
            assert_eq!(layout.len(), dense.distinct_values(), "digits {digits}");
            for value in (0..5000).chain([HOUR_US - 1, HOUR_US, 123_456_789]) {
                let index = layout.index_of(value);
                assert!((index as usize) < layout.len());
                assert_eq!(
                    layout.value_at(index),
                    dense.lowest_equivalent(value),
                    "digits {digits} value {value}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn layout_agrees_with_hdrhistogram_everywhere(value in 0u64..=HOUR_US, digits in 1u8..=3) {
            let layout = BucketLayout::new(digits, HOUR_US);
            let dense = layout.dense();
            prop_assert_eq!(layout.value_at(layout.index_of(value)), dense.lowest_equivalent(value));
        }
    }

    #[test]
    fn a_2_digit_hour_layout_has_3328_buckets() {
        assert_eq!(BucketLayout::new(2, HOUR_US).len(), 3328);
        assert_eq!(BucketLayout::new(3, HOUR_US).len(), 23_552);
    }

    #[test]
    fn slices_expire_exactly_at_the_boundary() {
        let (shape, layout) = (shape(), BucketLayout::new(2, HOUR_US));
        let mut scratch = layout.dense();
        let mut window = RollingHistogram::default();
        // Recorded at t=5s: in slice [0s, 10s), which leaves a 300s window at t=300s.
        window.record(&shape, &layout, 5 * S, [1_000u64].into_iter(), 1);
        let at = |t: u64, w: &RollingHistogram, scratch: &mut Histogram<u64>| {
            w.stats(&shape, &layout, t, scratch).requests
        };
        assert_eq!(at(5 * S, &window, &mut scratch), 1);
        assert_eq!(at(300 * S - 1, &window, &mut scratch), 1);
        assert_eq!(at(300 * S, &window, &mut scratch), 0);
        // Slices record at their own time: a second request at t=10s lives until t=310s.
        window.record(&shape, &layout, 10 * S, [2_000u64].into_iter(), 0);
        assert_eq!(at(299 * S, &window, &mut scratch), 2);
        assert_eq!(at(300 * S, &window, &mut scratch), 1);
        assert_eq!(at(310 * S - 1, &window, &mut scratch), 1);
        assert_eq!(at(310 * S, &window, &mut scratch), 0);
    }

    #[test]
    fn quantiles_merge_across_slices() {
        let (shape, layout) = (shape(), BucketLayout::new(2, HOUR_US));
        let mut scratch = layout.dense();
        let mut reference = layout.dense();
        let mut window = RollingHistogram::default();
        // 30 slices, each with different latencies: 1..=100 ms spread over time.
        let mut errors = 0;
        for slice in 0..30u64 {
            let latencies: Vec<u64> = (0..100u64).map(|i| (slice * 100 + i) * 37 + 250).collect();
            for &l in &latencies {
                reference.record(l).unwrap();
            }
            errors += slice % 3;
            window.record(
                &shape,
                &layout,
                slice * 10 * S + S,
                latencies.into_iter(),
                slice % 3,
            );
        }
        let stats = window.stats(&shape, &layout, 299 * S, &mut scratch);
        assert_eq!(stats.requests, 3000);
        assert_eq!(stats.errors, errors);
        let expected = QUANTILES.map(|q| reference.value_at_quantile(q));
        assert_eq!(stats.quantiles_us, Some(expected));
        // The scratch histogram is left empty for the next series.
        assert_eq!(scratch.len(), 0);
        // Exact values within HDR's 1%: p50 of 250..111_213 step 37 is the 1500th value.
        let p50_exact = 1499 * 37 + 250;
        let p50 = expected[0] as f64;
        assert!((p50 - p50_exact as f64).abs() / (p50_exact as f64) < 0.01);
    }

    #[test]
    fn empty_window_has_no_quantiles() {
        let (shape, layout) = (shape(), BucketLayout::new(2, HOUR_US));
        let stats = RollingHistogram::default().stats(&shape, &layout, 0, &mut layout.dense());
        assert_eq!(stats.requests, 0);
        assert_eq!(stats.quantiles_us, None);
        assert_eq!(stats.error_ratio(), None);
    }

    #[test]
    fn latencies_beyond_the_range_count_as_the_highest() {
        let (shape, layout) = (shape(), BucketLayout::new(2, HOUR_US));
        let mut window = RollingHistogram::default();
        window.record(&shape, &layout, 0, [10 * HOUR_US].into_iter(), 0);
        let stats = window.stats(&shape, &layout, 0, &mut layout.dense());
        let p99 = stats.quantiles_us.unwrap()[2];
        assert!(
            p99 >= HOUR_US && p99 as f64 <= HOUR_US as f64 * 1.01,
            "{p99}"
        );
    }

    #[test]
    fn state_round_trips_through_protobuf() {
        use prost::Message;
        let (shape, layout) = (shape(), BucketLayout::new(2, HOUR_US));
        let mut window = RollingHistogram::default();
        for slice in 0..5u64 {
            let latencies = (1..51u32).map(|i| u64::from(i) * 1_000 * (slice + 1));
            window.record(&shape, &layout, slice * 10 * S, latencies, slice);
        }
        let bytes = window.to_state(&shape, &layout).encode_to_vec();
        let state = RollingHistogramState::decode(bytes.as_slice()).unwrap();
        let restored = RollingHistogram::from_state(&state, &shape, &layout).unwrap();
        let now = 45 * S;
        assert_eq!(
            restored.stats(&shape, &layout, now, &mut layout.dense()),
            window.stats(&shape, &layout, now, &mut layout.dense())
        );
        let other = BucketLayout::new(3, HOUR_US);
        assert!(matches!(
            RollingHistogram::from_state(&state, &shape, &other),
            Err(StateError::LayoutMismatch { .. })
        ));
        let mut corrupt = state.clone();
        corrupt.slices[1].counts.pop();
        assert!(matches!(
            RollingHistogram::from_state(&corrupt, &shape, &layout),
            Err(StateError::BadSlice { epoch: 1, .. })
        ));
    }

    #[test]
    fn an_idle_series_holds_nothing_after_the_window() {
        let (shape, layout) = (shape(), BucketLayout::new(2, HOUR_US));
        let mut window = RollingHistogram::default();
        window.record(&shape, &layout, 0, [5u64, 50, 500].into_iter(), 0);
        assert!(window.heap_bytes() > 0);
        assert!(!window.expire(&shape, shape.epoch(300 * S)));
        assert_eq!(window.slices.len(), 0);
    }
}
