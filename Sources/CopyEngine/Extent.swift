/// A byte range of the source: `offset ..< offset + length`.
///
/// The extents given to `CopyEngine.run` are sorted, do not overlap, start on a block boundary
/// and are whole blocks long, except that the last may end at the source's end.
public struct Extent: Hashable, Sendable, CustomStringConvertible {
    public var offset: UInt64
    public var length: UInt64

    public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
    }

    public var end: UInt64 { offset + length }

    public var description: String { "\(offset)+\(length)" }

    /// Merges extents that touch or overlap into the fewest extents, sorted by offset.
    public static func coalesced(_ extents: [Extent]) -> [Extent] {
        var result: [Extent] = []
        for extent in extents.sorted(by: { $0.offset < $1.offset }) where extent.length > 0 {
            if let last = result.last, extent.offset <= last.end {
                result[result.count - 1].length = max(last.end, extent.end) - last.offset
            } else {
                result.append(extent)
            }
        }
        return result
    }

    /// The extents of the blocks numbered `blocks` (any order, duplicates allowed), coalesced,
    /// the last clipped to `sourceSize`. Blocks wholly past the end are dropped.
    public static func ofBlocks(_ blocks: some Sequence<UInt64>, blockSize: Int, sourceSize: UInt64) -> [Extent] {
        let size = UInt64(blockSize)
        var extents: [Extent] = []
        for block in blocks.sorted() {
            let (start, overflow) = block.multipliedReportingOverflow(by: size)
            guard !overflow, start < sourceSize else { continue }
            let end = min(start + size, sourceSize)
            if let last = extents.last, start <= last.end {
                extents[extents.count - 1].length = max(last.end, end) - last.offset
            } else {
                extents.append(Extent(offset: start, length: end - start))
            }
        }
        return extents
    }
}

/// One block of the copy, as the engine saw it: handed to `onBlock` and to the sink.
public struct BlockRecord: Hashable, Sendable {
    /// `offset / blockSize`.
    public let index: UInt64
    public let offset: UInt64
    /// `blockSize`, or less for the last block of a source whose size is not a multiple of it.
    public let length: Int
    /// Every byte is zero.
    public let isZero: Bool
    /// XXH3-128 of the block's bytes (also for zero blocks).
    public let digest: Digest128

    public init(index: UInt64, offset: UInt64, length: Int, isZero: Bool, digest: Digest128) {
        self.index = index
        self.offset = offset
        self.length = length
        self.isZero = isZero
        self.digest = digest
    }
}

/// One read of the plan: whole blocks, at most `ioSize` bytes, within one coalesced extent.
struct PlannedRead: Hashable, Sendable {
    var offset: UInt64
    var length: Int
}

extension CopyEngine {
    /// Checks `extents` against the source and the block size, merges adjacent ones, and cuts
    /// them into reads of at most `ioSize` bytes.
    static func plan(_ extents: [Extent], sourceSize: UInt64, blockSize: Int, ioSize: Int,
                     path: String) throws(CopyError) -> [PlannedRead] {
        let block = UInt64(blockSize)
        var merged: [Extent] = []
        var previousEnd: UInt64 = 0
        for (number, extent) in extents.enumerated() {
            guard extent.length > 0 else { continue }
            let (end, overflow) = extent.offset.addingReportingOverflow(extent.length)
            guard !overflow, end <= sourceSize else {
                throw .invalid(path, "extent \(number) (\(extent)) ends past the source's end (\(sourceSize) bytes)")
            }
            guard extent.offset % block == 0 else {
                throw .invalid(path, "extent \(number) (\(extent)) does not start on a \(blockSize)-byte block boundary")
            }
            guard end % block == 0 || end == sourceSize else {
                throw .invalid(path, "extent \(number) (\(extent)) does not end on a block boundary or at the source's end")
            }
            guard extent.offset >= previousEnd else {
                throw .invalid(path, "extent \(number) (\(extent)) is out of order or overlaps the one before")
            }
            if let last = merged.last, extent.offset == last.end {
                merged[merged.count - 1].length += extent.length
            } else {
                merged.append(extent)
            }
            previousEnd = end
        }
        var reads: [PlannedRead] = []
        for extent in merged {
            var offset = extent.offset
            while offset < extent.end {
                let length = min(UInt64(ioSize), extent.end - offset)
                reads.append(PlannedRead(offset: offset, length: Int(length)))
                offset += length
            }
        }
        return reads
    }
}
