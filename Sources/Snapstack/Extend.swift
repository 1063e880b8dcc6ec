import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// How `extend` changes the size of a snapshot's store.
public enum StoreSizeChange: Sendable, Equatable {
    /// To this size (`--size 4G`).
    case to(Bytes)
    /// By this much (`--size +2G`).
    case by(Bytes)
    /// By this share of the store's current size (`--size +50%`).
    case byPercent(Double)
    /// To this share of the origin's size (`--size 25%`), as `snapshot --size` counts.
    case toPercentOfOrigin(Double)
}

extension StoreSizeChange {
    /// The store size this change asks for, at most `UInt64.max` bytes: a size past any disk
    /// (`+1e300%`, `+16E` on a large store) saturates instead of overflowing, and the caller
    /// cuts it to what the origin can fill.
    public func requestedSize(current: Bytes, origin: Bytes) throws -> Bytes {
        /// `percent`% of `base`, rounded up, saturating.
        func share(of base: Bytes, _ percent: Double) -> UInt64 {
            let value = (Double(base.rawValue) * percent / 100).rounded(.up)
            // 2^64 is the first Double that no UInt64 holds.
            return value >= 0x1p64 ? .max : UInt64(value)
        }
        func sum(_ a: UInt64, _ b: UInt64) -> Bytes {
            let (total, overflow) = a.addingReportingOverflow(b)
            return Bytes(overflow ? .max : total)
        }
        switch self {
        case .to(let size):
            return size
        case .by(let size):
            return sum(current.rawValue, size.rawValue)
        case .byPercent(let percent):
            guard percent > 0, percent.isFinite else { throw SnapstackError(.invalidArgument, "a growth must be more than 0%") }
            return sum(current.rawValue, share(of: current, percent))
        case .toPercentOfOrigin(let percent):
            guard percent > 0, percent.isFinite else { throw SnapstackError(.invalidArgument, "a size must be more than 0%") }
            return Bytes(share(of: origin, percent))
        }
    }
}

/// A store that was grown.
public struct ExtendResult: Sendable, Equatable {
    /// `NAME-SNAP`.
    public var name: String
    public var previousSize: Bytes
    /// The size recorded now, in whole chunks.
    public var size: Bytes
    /// The COW device's size as the kernel reports it now (`dmsetup status`: `<used>/<total>`).
    public var kernelSize: Bytes?
    /// True when the request was cut to the largest store the origin can fill.
    public var limited: Bool
}

/// A snapshot's store as the kernel sees it now.
public struct StoreUsage: Sendable, Equatable {
    public enum Condition: Sendable, Equatable {
        /// In use: `allocated` of `total` (the COW device's size), `metadata` of it the store's own.
        case active(allocated: Bytes, total: Bytes, metadata: Bytes)
        /// The kernel invalidated the snapshot: its store filled up (origin writes) or failed.
        case invalid
        /// A `PO` snapshot could not store a write to the snapshot itself.
        case overflow
        /// No live snapshot device: not yet re-activated after a reboot (`reconcile`).
        case missing
        /// Another status (`Unknown`).
        case unknown
    }

    /// `NAME-SNAP`.
    public var name: String
    public var snapshotID: String
    /// The protected device it is a snapshot of.
    public var origin: String
    public var originSize: Bytes
    /// The store is a file or logical volume snapstack made (and can grow), not a block device.
    public var storeIsGrowable: Bool
    public var storePath: String
    /// The size recorded in the database.
    public var storeSize: Bytes
    public var chunk: Bytes
    public var condition: Condition
    /// True once `dropOverflowed` found it invalid but could not drop it (open).
    public var markedInvalid: Bool

    public init(name: String, snapshotID: String, origin: String, originSize: Bytes, storeIsGrowable: Bool,
                storePath: String, storeSize: Bytes, chunk: Bytes, condition: Condition, markedInvalid: Bool = false) {
        self.name = name
        self.snapshotID = snapshotID
        self.origin = origin
        self.originSize = originSize
        self.storeIsGrowable = storeIsGrowable
        self.storePath = storePath
        self.storeSize = storeSize
        self.chunk = chunk
        self.condition = condition
        self.markedInvalid = markedInvalid
    }

    /// The share of the store in use, as `lvs` shows `Data%` (0...1); nil unless active.
    public var usedFraction: Double? {
        guard case .active(let allocated, let total, _) = condition, total > .zero else { return nil }
        return Double(allocated.rawValue) / Double(total.rawValue)
    }

    /// The largest store this snapshot can use: one that holds a copy of every origin chunk.
    public var largestUsefulSize: Bytes { Orchestrator.largestUsefulStore(origin: originSize, chunk: chunk) }
}

/// What `dropOverflowed` did.
public struct OverflowDrop: Sendable, Equatable {
    /// `NAME-SNAP`.
    public var name: String
    /// Why the snapshot is dead, in words for the event log.
    public var reason: String
    /// False when it is still open (mounted or read): it was marked invalid and is dropped
    /// once closed.
    public var dropped: Bool
}

/// A line of the event log.
public struct EventSummary: Sendable, Equatable {
    public var id: Int64
    public var time: Date
    /// `snapshot`, `drop`, `extend`, `overflow`, `store-limit`, `store-watch`, `reconcile`...
    public var kind: String
    /// The device or snapshot (`NAME`, `NAME-SNAP`), empty for the state as a whole.
    public var subject: String
    public var message: String
}

/// The kinds of event this file records.
public enum StoreEvent {
    /// A store was grown (by `extend` or by the store watch).
    public static let extend = "extend"
    /// A snapshot the kernel invalidated was dropped, or marked for dropping.
    public static let overflow = "overflow"
    /// A store is past the watch's threshold and cannot grow: it may overflow.
    public static let storeLimit = "store-limit"
    /// The store watch could not do what it meant to.
    public static let storeWatch = "store-watch"
}

extension Orchestrator {
    /// The store that holds a copy of every chunk of an `origin`: dm-snapshot's persistent
    /// store (dm-snap-persistent.c) keeps one header chunk, then areas of one metadata chunk
    /// followed by chunk/16 data chunks (16 bytes per exception), and zeroes the next area's
    /// metadata chunk as soon as an area is full — so a store sized to the last data chunk
    /// exactly would still fail on that zeroing.
    public static func largestUsefulStore(origin: Bytes, chunk: Bytes) -> Bytes {
        let chunkBytes = max(chunk.rawValue, 4096)
        let data = (origin.rawValue + chunkBytes - 1) / chunkBytes
        let perArea = chunkBytes / 16
        return Bytes((2 + data + data / perArea) * chunkBytes)
    }

    /// Grows the store of the snapshot named `argument` (`NAME-SNAP` or its device path).
    ///
    /// The store file is grown and preallocated (`ftruncate`, `fallocate`), its loop device
    /// takes the new size (`LOOP_SET_CAPACITY`), and the kernel uses it at once: dm-snapshot
    /// reads the COW device's size each time it places a new chunk (`get_dev_size` in
    /// `persistent_prepare_exception`) and reports it in its status, so no table reload — no
    /// suspend — is needed; the new size is checked in the snapshot's status before it is
    /// recorded. The growth is recorded before the file changes and finished after, so that
    /// `reconcile` completes one a crash interrupted. `reason` is added to the event.
    ///
    /// Refused: a store that is a block device (grow the device itself), a snapshot that is not
    /// live and valid, and a size that does not grow the store. A request past the largest
    /// store the origin can fill is cut to it (`limited`).
    @discardableResult
    public func extend(snapshot argument: String, _ change: StoreSizeChange, reason: String? = nil) throws -> ExtendResult {
        let (found, device) = try snapshot(named: argument)
        let label = "\(device.name)-\(found.name)"
        guard found.storeKind != .device else {
            throw SnapstackError(.refused, "cannot extend \(label): its store is the block device \(found.storePath)",
                                 why: "snapstack grows only the store files it makes",
                                 remedy: "grow that device itself (e.g. lvextend): the kernel reads the store's size at every new chunk")
        }
        guard found.state == .active || found.state == .mergePending else {
            throw SnapstackError(.refused, "cannot extend \(label)", why: "it is \(found.state.rawValue)",
                                 remedy: found.state == .invalid ? "drop it" : "run `snapstack reconcile`")
        }
        let name = try Layout.snapshotName(device.name, found.name)
        guard try dm.info(name) != nil else {
            throw SnapstackError(.refused, "cannot extend \(label)", why: "\(name.devicePath) does not exist",
                                 remedy: "run `snapstack reconcile` to re-activate it")
        }
        if case .snapshot(let status)? = try? dm.status(name).first?.status, status == .invalid || status == .overflow {
            throw SnapstackError(.refused, "cannot extend \(label)",
                                 why: "the kernel reports it \(status == .invalid ? "invalid" : "overflowed"): a larger store cannot bring back what it lost",
                                 remedy: "drop it")
        }
        // An earlier growth a crash interrupted is finished first, so that sizes add up.
        var snapshot = found
        if let pending = try database.storeGrowth(snapshotID: snapshot.id) {
            try finishGrowth(pending, of: snapshot, device: device)
            snapshot = try database.snapshot(id: snapshot.id) ?? snapshot
        }

        let current = Bytes(UInt64(snapshot.storeSizeBytes))
        let origin = Bytes(UInt64(device.sizeBytes))
        let chunk = Sectors(UInt64(snapshot.chunkSectors)).bytes
        let largest = Self.largestUsefulStore(origin: origin, chunk: chunk)
        var target = try change.requestedSize(current: current, origin: origin)
        let limited = target > largest
        // Whole chunks: the kernel places no partial chunk. `largest` is whole chunks already,
        // so rounding a smaller target up cannot pass it (nor overflow).
        target = limited ? largest : Bytes((target.rawValue + chunk.rawValue - 1) / chunk.rawValue * chunk.rawValue)
        guard target > current else {
            if limited {
                throw SnapstackError(.invalidArgument, "the store of \(label) cannot grow",
                                     why: "its \(Self.describe(current)) already hold a copy of every chunk of \(device.name); it cannot overflow")
            }
            throw SnapstackError(.invalidArgument, "\(Self.describe(target)) does not grow the store of \(label)",
                                 why: "it has \(Self.describe(current)) already",
                                 remedy: "give a larger size, or +SIZE to add to it")
        }

        // Intent, then the file, then the kernel, then the outcome (`Growth`).
        let growth = StoreGrowthRecord(snapshotID: snapshot.id, fromBytes: snapshot.storeSizeBytes, toBytes: Int64(target.rawValue))
        try run(Growth.begin, growth, of: snapshot, device: device)
        let kernelSize: Bytes?
        do {
            kernelSize = try run(Growth.finish, growth, of: snapshot, device: device)
        } catch var error as SnapstackError {
            error.remedy = "run `snapstack reconcile` to finish growing it"
            throw error
        }
        var message = "store grown from \(Self.describe(current)) to \(Self.describe(target))"
        if limited { message += " (the most the origin can fill)" }
        if let reason { message += "; \(reason)" }
        event(StoreEvent.extend, label, message)
        return ExtendResult(name: label, previousSize: current, size: target, kernelSize: kernelSize, limited: limited)
    }

    public func extend(snapshot argument: String, to size: Bytes) throws -> ExtendResult {
        try extend(snapshot: argument, .to(size))
    }

    public func extend(snapshot argument: String, by size: Bytes) throws -> ExtendResult {
        try extend(snapshot: argument, .by(size))
    }

    /// The steps of a growth after the file may have been grown (`Growth.finish`); idempotent,
    /// used by reconcile too. Returns the COW size the kernel reports, nil when the snapshot is
    /// not live.
    @discardableResult
    func finishGrowth(_ growth: StoreGrowthRecord, of snapshot: SnapshotRecord, device: DeviceRecord) throws -> Bytes? {
        try run(Growth.finish, growth, of: snapshot, device: device)
    }
}
