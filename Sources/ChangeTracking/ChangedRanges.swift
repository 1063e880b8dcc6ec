import BlockIO

/// Data blocks as sorted, disjoint, non-adjacent, non-empty end-exclusive ranges — the form
/// `era_invalidate` prints its `<range begin end>` elements in.
public struct ChangedRanges: Sendable, Equatable, RandomAccessCollection {
    public private(set) var ranges: [Range<UInt64>]

    /// Sorts `ranges` and merges those that overlap or touch; empty ranges are dropped.
    public init(coalescing ranges: some Sequence<Range<UInt64>>) {
        var merged: [Range<UInt64>] = []
        for range in ranges.filter({ !$0.isEmpty }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, range.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<Swift.max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        self.ranges = merged
    }

    /// The runs of set bits of `bitmap` (bit i of word i / 64 stands for block i) below `limit`.
    init(bitmap: [UInt64], limit: UInt64) {
        var ranges: [Range<UInt64>] = []
        var start: UInt64?
        for (index, word) in bitmap.enumerated() {
            let base = UInt64(index) * 64
            if base >= limit { break }
            // Whole words of zeros or ones are the common case on a large device.
            if word == 0, start == nil { continue }
            if word == .max, start != nil { continue }
            var bits = word
            var bit: UInt64 = 0
            while bit < 64 {
                if let begin = start {
                    // Inside a run: it ends at the next zero bit.
                    let ones = UInt64((~bits).trailingZeroBitCount)
                    if ones >= 64 - bit { break }
                    ranges.append(begin..<(base + bit + ones))
                    start = nil
                    bit += ones
                    bits = ones == 64 ? 0 : bits >> ones
                } else {
                    let zeros = UInt64(bits.trailingZeroBitCount)
                    if zeros >= 64 - bit { break }
                    start = base + bit + zeros
                    bit += zeros
                    bits >>= zeros
                }
            }
        }
        if let begin = start { ranges.append(begin..<limit) }
        self.ranges = ranges.compactMap { range in
            range.lowerBound < limit ? range.lowerBound..<Swift.min(range.upperBound, limit) : nil
        }
    }

    public var startIndex: Int { ranges.startIndex }
    public var endIndex: Int { ranges.endIndex }
    public subscript(position: Int) -> Range<UInt64> { ranges[position] }

    /// The number of blocks in all the ranges.
    public var blockCount: UInt64 { ranges.reduce(0) { $0 + UInt64($1.count) } }

    /// The ranges in bytes of the era device for data blocks of `blockSize`; the last block
    /// of a device whose size is not a multiple of the block size is cut at `deviceSize`.
    public func byteRanges(blockSize: Sectors, deviceSize: Bytes) -> [Range<UInt64>] {
        let size = blockSize.bytes.rawValue
        return ranges.compactMap { range in
            let lower = range.lowerBound * size
            let upper = Swift.min(range.upperBound * size, deviceSize.rawValue)
            return lower < upper ? lower..<upper : nil
        }
    }
}
