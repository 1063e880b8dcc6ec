import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// What growing a snapshot's COW store file does, as a value: `extend` (and the store watch
/// through it) records the intent, grows the file, then finishes; reconcile finishes a growth a
/// crash interrupted with the same finishing steps. Finishing is idempotent: a file already
/// as large is not grown again, and a loop device already at the file's size is refreshed to
/// the same size.
enum GrowthStep: Equatable, Sendable, CustomStringConvertible {
    /// The growth recorded before the file changes: reconcile finishes what it finds.
    case recordIntent
    /// The file grown to the target, blocks reserved; a failure leaves the file as it was and
    /// forgets the intent.
    case growFile
    /// The file brought to at least the target (a crash may have come before or after the
    /// growth); a larger file is kept as it is.
    case completeFile
    /// Each loop device over the file told its new size, after its write cache is settled for
    /// the blocks the kernel can now reach.
    case refreshLoops
    /// The snapshot's COW space as the kernel reports it, which must have grown.
    case checkKernelSize
    /// The new size recorded and the intent cleared.
    case recordOutcome
    case reached(Failpoint)

    var description: String {
        switch self {
        case .recordIntent: "record-intent"
        case .growFile: "grow-file"
        case .completeFile: "complete-file"
        case .refreshLoops: "refresh-loops"
        case .checkKernelSize: "check-kernel-size"
        case .recordOutcome: "record-outcome"
        case .reached(let point): "failpoint \(point.rawValue)"
        }
    }
}

enum Growth {
    /// A new growth, up to the grown file.
    static let begin: [GrowthStep] = [.recordIntent, .reached(.extendRecorded), .growFile, .reached(.extendFileGrown)]
    /// After the file may have been grown: by `extend` right after `begin`, by reconcile later.
    static let finish: [GrowthStep] = [.completeFile, .refreshLoops, .checkKernelSize, .reached(.extendCapacityRefreshed), .recordOutcome]
}

extension Orchestrator {
    /// The one executor of growth plans. Returns the COW size the kernel reports, nil when the
    /// snapshot is not live.
    @discardableResult
    func run(_ steps: [GrowthStep], _ growth: StoreGrowthRecord, of snapshot: SnapshotRecord, device: DeviceRecord) throws -> Bytes? {
        let label = "\(device.name)-\(snapshot.name)"
        let path = FilePath(snapshot.storePath)
        let target = Bytes(UInt64(growth.toBytes))
        var size = target
        var kernelSize: Bytes?
        for step in steps {
            switch step {
            case .recordIntent:
                try database.begin(growth)
            case .growFile:
                do {
                    if snapshot.storeKind == .volume {
                        size = try growVolume(snapshot, to: target)
                    } else {
                        try host.growFile(path, to: target, preallocate: true, zeroFill: zeroFill(Self.storeZeroFill, for: path))
                    }
                } catch {
                    // grow leaves the file as it was (cut back on a failed fallocate): nothing to finish.
                    _ = try? database.abandonStoreGrowth(snapshotID: snapshot.id)
                    let full = (error as? BlockIOError)?.errno == .noSpace
                    throw SnapstackError(.failed, "cannot grow the store of \(label) to \(Self.describe(target))", why: "\(error)",
                                         remedy: full ? "free space on the file system of \(snapshot.storePath)"
                                                : snapshot.storeKind == .volume ? "add room to its volume group (vgextend), or drop the snapshot" : nil,
                                         cause: error)
                }
            case .completeFile where snapshot.storeKind == .volume:
                // lvextend leaves a volume already that large alone.
                try failing("cannot grow the store of \(label)") { size = try growVolume(snapshot, to: target) }
            case .completeFile:
                try failing("cannot grow the store of \(label)") {
                    let existing = (try? FileManager.default.attributesOfItem(atPath: snapshot.storePath)[.size] as? NSNumber)?.uint64Value
                    if let existing, existing >= target.rawValue {
                        size = Bytes(existing)
                    } else {
                        try host.growFile(path, to: target, preallocate: true, zeroFill: zeroFill(Self.storeZeroFill, for: path))
                    }
                }
            case .refreshLoops:
                try failing("cannot grow the store of \(label)") {
                    for loop in try host.loops(backing: snapshot.storePath) {
                        // Before the kernel can reach the new part: it may hold blocks not
                        // written yet, whose first writes need the flushes again.
                        try settleWriteCache(loop, of: path)
                        try host.refreshLoopCapacity(loop.path)
                    }
                }
            case .checkKernelSize:
                let name = try Layout.snapshotName(device.name, snapshot.name)
                if try dm.info(name) != nil, case .snapshot(.active(_, let total, _))? = try dm.status(name).first?.status {
                    kernelSize = total.bytes
                    guard total.bytes >= target else {
                        throw SnapstackError(.failed, "the kernel does not use the grown store of \(label)",
                                             why: "\(name.devicePath) still reports \(Self.describe(total.bytes)) of COW space, not \(Self.describe(target))")
                    }
                }
            case .recordOutcome:
                try database.finishStoreGrowth(snapshotID: snapshot.id, sizeBytes: Int64(size.rawValue))
            case .reached(let point):
                try reached(point)
            }
        }
        return kernelSize
    }
}

extension Orchestrator {
    /// Grows a store volume to at least `target`; returns its size, whole extents.
    func growVolume(_ snapshot: SnapshotRecord, to target: Bytes) throws -> Bytes {
        let (group, name) = try Self.volumeParts(snapshot.storePath)
        return try volumes.extendVolume(group: group, name: name, to: target)
    }
}
