import BlockIO
import ChangeTracking
import CopyEngine
import DeviceMapper
import Foundation
import Images
import Locking
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// Where an export's bytes go.
public enum ExportDestination: Sendable, Equatable {
    /// A sparse raw image file with its manifest and checksum file beside it; an incremental
    /// updates the image in place.
    case image(FilePath)
    /// Standard output: a full export as the raw image (for `restic backup --stdin` and the
    /// like), or a delta stream that `snapstack apply` turns into an image.
    case standardOutput(StreamFormat)
}

/// What `export --to -` writes.
public enum StreamFormat: String, Sendable, CaseIterable {
    /// The device's bytes in order: nothing else, so any tool can store and restore it.
    case raw
    /// snapstack's delta stream: the manifest, then data and zero records, then an end record.
    case delta
}

/// An export as the user asked for it.
public struct ExportRequest: Sendable {
    /// The snapshot, as `snapshot` printed it or as `NAME-SNAP`.
    public var snapshot: String
    public var destination: ExportDestination
    /// The export to build on; nil for a full export.
    public var since: String?
    /// Read every block when the change-tracking metadata cannot be read, instead of failing.
    public var allowFull: Bool
    public var maxRate: UInt64?
    /// A full export may rewrite an image that holds earlier exports of the same disk, starting
    /// its chain anew (scheduled backups do, when the change tracking cannot be built on).
    public var replacingImage: Bool

    public init(snapshot: String, destination: ExportDestination, since: String? = nil,
                allowFull: Bool = false, maxRate: UInt64? = nil, replacingImage: Bool = false) {
        self.snapshot = snapshot
        self.destination = destination
        self.since = since
        self.allowFull = allowFull
        self.maxRate = maxRate
        self.replacingImage = replacingImage
    }
}

/// What an export did.
public struct ExportOutcome: Sendable {
    public var export: ExportSummary
    public var statistics: CopyStatistics
    /// Blocks the change tracking reported (the whole device for a full export).
    public var plannedBlocks: UInt64
    /// True when the change tracking could not be read and `--allow-full` made it read everything.
    public var readEverything: Bool
    /// True when an interrupted run of the same export was finished.
    public var resumed: Bool
}

extension Orchestrator {
    /// The block size of exports of `device`: its change-tracking block, so that one changed era
    /// block is one image block; devices without tracking use 64 KiB.
    static func exportBlockSize(_ device: DeviceRecord) -> Int {
        device.cbtBlockSectors.map { $0 * 512 } ?? 65536
    }

    /// Copies a snapshot out: everything, or only what changed since an earlier export.
    ///
    /// The image's manifest is marked incomplete before the first block is written and complete
    /// after the last is synced, so that a crash leaves an image that says so; running the same
    /// export again copies the same blocks of the same snapshot and completes it.
    public func export(_ request: ExportRequest, progress: ((CopyProgress) -> Void)? = nil,
                       cancel: CancellationFlag? = nil) throws -> ExportOutcome {
        let (snapshot, device) = try self.snapshot(named: request.snapshot)
        let snapshotDevice = try Layout.snapshotName(device.name, snapshot.name)
        try checkReadable(snapshot, device: snapshotDevice)
        let blockSize = Self.exportBlockSize(device)
        let size = UInt64(device.sizeBytes)

        let base = try request.since.map { try baseExport($0, device: device, snapshot: snapshot, blockSize: blockSize, allowFull: request.allowFull) }

        // The image and its manifest decide whether this is a new export or the re-run of one
        // that stopped half-way.
        var resumedManifest: ImageManifest?
        var imageLock: ImageWriterLock?
        defer { withExtendedLifetime(imageLock) {} }
        if case .image(let path) = request.destination {
            imageLock = try ImageManifest.lockWriter(ofImage: path)
            resumedManifest = try checkImage(path, device: device, snapshot: snapshot, base: base,
                                             replacing: request.replacingImage)
        } else if base != nil, case .standardOutput(.raw) = request.destination {
            throw SnapstackError(.invalidArgument, "an incremental export cannot be a raw stream",
                                 why: "a raw stream has no room to say which blocks changed",
                                 remedy: "use --format delta and `snapstack apply` on the receiving side")
        }

        let (ranges, readEverything) = try rangesToRead(of: device, since: base, blockSize: blockSize, allowFull: request.allowFull)
        let extents = ranges.map { range in
            let offset = range.lowerBound * UInt64(blockSize)
            return Extent(offset: offset, length: min(range.upperBound * UInt64(blockSize), size) - offset)
        }
        let plannedBlocks = ranges.reduce(0) { $0 + UInt64($1.count) }

        // The record, before any byte moves.
        let now = Date()
        var record = ExportRecord(
            id: resumedManifest?.export.id ?? ExportRecord.newID(), deviceID: device.id,
            snapshotID: snapshot.id, snapshotName: snapshot.name, kind: base == nil ? .full : .incremental,
            baseExportID: base?.id, era: snapshot.era, sinceEra: base?.era,
            blockSizeBytes: Int64(blockSize), deviceSizeBytes: Int64(size),
            imagePath: request.destination.imagePath?.string, format: request.destination.formatName,
            createdAt: resumedManifest?.export.createdAt ?? now)
        try database.save(record)

        let manifest = exportManifest(record, device: device, snapshot: snapshot, base: base,
                                      resumed: resumedManifest, destination: request.destination)

        let engine: CopyEngine
        do {
            engine = try CopyEngine(source: FilePath(snapshotDevice.devicePath),
                                    options: CopyOptions(blockSize: blockSize, maxRate: request.maxRate))
        } catch {
            throw SnapstackError(.failed, "cannot open the snapshot \(snapshotDevice.devicePath)", why: "\(error)", cause: error)
        }
        guard engine.sourceSize >= size else {
            throw SnapstackError(.failed, "the snapshot \(snapshotDevice.devicePath) is smaller than its origin",
                                 why: "\(engine.sourceSize) bytes, the device has \(size)")
        }

        let statistics: CopyStatistics
        do {
            // The engine holds the snapshot open from here: the state may change around the copy.
            statistics = try withStateLockReleased {
                try copy(to: request.destination, manifest: manifest, engine: engine, extents: extents,
                         fresh: base == nil, size: size, progress: progress, cancel: cancel)
            }
        } catch let error as CopyError where error.isCancelled {
            throw SnapstackError(.failed, "export \(record.id) of \(device.name)-\(snapshot.name) was cancelled",
                                 why: "the image is marked incomplete",
                                 remedy: "run the same command again to finish it", cause: error)
        } catch let error as SnapstackError {
            throw error
        } catch {
            throw SnapstackError(.failed, "export \(record.id) of \(device.name)-\(snapshot.name) failed", why: "\(error)",
                                 remedy: "run the same command again to finish it", cause: error)
        }

        record.state = .complete
        record.bytesRead = Int64(statistics.bytesRead)
        record.bytesWritten = Int64(statistics.bytesWritten)
        record.completedAt = Date()
        try database.save(record)
        try? database.record(event: "export", subject: device.name,
                          message: "\(record.kind.rawValue) export \(record.id) of \(snapshot.name): \(statistics.bytesRead) bytes read")
        return ExportOutcome(export: ExportSummary(record, device: device.name), statistics: statistics, plannedBlocks: plannedBlocks,
                             readEverything: readEverything, resumed: resumedManifest != nil)
    }

    /// The manifest of an export, incomplete: its chain continues the base's (or the resumed
    /// export's, whose own id ends it already).
    private func exportManifest(_ record: ExportRecord, device: DeviceRecord, snapshot: SnapshotRecord, base: ExportRecord?,
                                resumed resumedManifest: ImageManifest?, destination: ExportDestination) -> ImageManifest {
        let size = UInt64(device.sizeBytes)
        let chain = resumedManifest.map { Array($0.export.chain.dropLast()) } ?? (base == nil ? [] : baseChain(destination))
        return ImageManifest(
            state: .incomplete,
            export: .init(id: record.id, kind: record.kind.rawValue, base: base?.id, chain: chain + [record.id],
                          createdAt: record.createdAt, completedAt: nil),
            device: .init(id: device.id, name: device.name, sizeBytes: size, wwn: device.wwn, serial: device.serial,
                          partUUID: device.partUUID, fsUUID: device.fsUUID),
            snapshot: .init(id: snapshot.id, name: snapshot.name, era: snapshot.era, createdAt: snapshot.createdAt),
            sinceEra: base?.era, blockSize: Int(record.blockSizeBytes),
            checksumFile: destination.imagePath.map { ImageManifest.checksumPath(forImage: $0).lastComponent?.string ?? "" } ?? "")
    }

    /// The blocks an export reads: those changed since `base` (or every block, for a full
    /// export, or when the tracking cannot be read and `allowFull` says so).
    private func rangesToRead(of device: DeviceRecord, since base: ExportRecord?, blockSize: Int,
                              allowFull: Bool) throws -> (ranges: [Range<UInt64>], readEverything: Bool) {
        let blockCount = UInt64(device.sizeBytes).dividedRoundingUp(by: UInt64(blockSize))
        guard let base else { return ([0..<blockCount], false) }
        do {
            try checkTrackingContinuous(device, since: base)
            return (try changedBlocks(of: device, since: base.era ?? 0), false)
        } catch let error where allowFull {
            notice("cannot use the change tracking of \(device.name) (\(error)); reading every block as --allow-full asks")
            return ([0..<blockCount], true)
        }
    }

    /// Runs the copy into the destination's sink.
    private func copy(to destination: ExportDestination, manifest: ImageManifest, engine: CopyEngine, extents: [Extent],
                      fresh: Bool, size: UInt64, progress: ((CopyProgress) -> Void)?,
                      cancel: CancellationFlag?) throws -> CopyStatistics {
        switch destination {
        case .image(let path):
            return try copyIntoImage(path, manifest: manifest, engine: engine, extents: extents,
                                     fresh: fresh, progress: progress, cancel: cancel)
        case .standardOutput(.raw):
            let sink = RawStreamSink(descriptor: .standardOutput, size: size)
            let statistics = try engine.run(extents: extents, into: sink, progress: progress, cancel: cancel)
            try sink.finish()
            return statistics
        case .standardOutput(.delta):
            var streamed = manifest
            streamed.state = .complete
            streamed.export.completedAt = Date()
            let sink = try DeltaStreamWriter(
                descriptor: .standardOutput,
                header: DeltaStreamHeader(blockSize: manifest.blockSize, deviceSize: size, payload: try streamed.encoded()))
            let statistics = try engine.run(extents: extents, into: sink, progress: progress, cancel: cancel)
            try sink.finish()
            return statistics
        }
    }

    /// Blocks of `device` written in era `era` or later, read from a metadata snapshot of its
    /// era device (dm-era's `take_metadata_snap`, dropped again whatever happens).
    func changedBlocks(of device: DeviceRecord, since era: Int64) throws -> [Range<UInt64>] {
        guard let blockSectors = device.cbtBlockSectors, let metadataFile = device.eraMetadataPath else {
            throw SnapstackError(.refused, "\(device.name) has no change tracking",
                                 why: "it was protected with --no-cbt", remedy: "take a full export")
        }
        let realName = try Layout.realName(device.name)
        // One metadata snapshot per era device at a time: two exports of the same device
        // must not drop each other's. (The directory holds no metadata file when the metadata
        // is on a volume.)
        try? FileManager.default.createDirectory(atPath: metadataDirectory.string, withIntermediateDirectories: true)
        let lock = try FileLock(directory: metadataDirectory, name: "\(device.id).lock", mode: .exclusive, timeout: 300)
        defer { withExtendedLifetime(lock) {} }
        let layer = try dm.status(realName).first?.status
        if case .failed? = layer {
            throw SnapstackError(.trackingInterrupted, "the change tracking of \(device.name) failed",
                                 why: Self.eraMetadataFailed,
                                 remedy: "run `snapstack reconcile` (the daemon does within seconds) to let writes bypass it, then take a full export, or add --allow-full to read every block")
        }
        guard case .era(let status)? = layer else {
            throw SnapstackError(.failed, "\(realName.devicePath) is not tracking changes",
                                 remedy: "run `snapstack reconcile`")
        }
        guard era >= 0, era <= Int64(status.currentEra) else {
            throw SnapstackError(.invalidArgument, "era \(era) is not an era of \(device.name)",
                                 why: "its current era is \(status.currentEra)")
        }
        if status.heldMetadataRoot != nil {
            // Held by a reader that died: nobody else can hold it while we have the lock.
            try dm.message(realName, era: .dropMetadataSnapshot)
        }
        try dm.message(realName, era: .takeMetadataSnapshot)
        defer { try? dm.message(realName, era: .dropMetadataSnapshot) }
        let metadataDevice: String
        if device.eraMetadataVolume != nil {
            metadataDevice = "/dev/" + metadataFile
        } else {
            guard let loop = try host.loops(backing: metadataFile).first else {
                throw SnapstackError(.failed, "the change-tracking metadata \(metadataFile) is not attached",
                                     remedy: "run `snapstack reconcile`")
            }
            metadataDevice = loop.path
        }
        do {
            let expected = EraGeometry(blockSize: Sectors(UInt64(blockSectors)), deviceBytes: UInt64(device.sizeBytes))
            return try EraMetadata(path: FilePath(metadataDevice)).changedBlocks(since: UInt32(era), expecting: expected)
        } catch {
            throw SnapstackError(.failed, "cannot read the change tracking of \(device.name) from \(metadataDevice)",
                                 why: "\(error)", remedy: "--allow-full reads every block instead", cause: error)
        }
    }

    // MARK: Checks

    private func checkReadable(_ snapshot: SnapshotRecord, device name: DMName) throws {
        guard snapshot.state == .active else {
            throw SnapstackError(.refused, "\(name.devicePath) cannot be exported", why: "it is \(snapshot.state.rawValue)")
        }
        guard try dm.info(name) != nil else {
            throw SnapstackError(.failed, "\(name.devicePath) does not exist", remedy: "run `snapstack reconcile`")
        }
        switch try dm.status(name).first?.status {
        case .snapshot(.invalid)?, .snapshot(.overflow)?:
            throw SnapstackError(.refused, "\(name.devicePath) cannot be exported",
                                 why: "the kernel invalidated it (its store overflowed)",
                                 remedy: "drop it and take a new snapshot with a larger --size")
        default: break
        }
    }

    private func baseExport(_ id: String, device: DeviceRecord, snapshot: SnapshotRecord, blockSize: Int,
                            allowFull: Bool) throws -> ExportRecord {
        guard let base = try database.export(id: id) else {
            throw SnapstackError(.notFound, "no export has the id \"\(id.replacingNewlines)\"",
                                 remedy: "`snapstack exports` lists them")
        }
        guard base.deviceID == device.id else {
            throw SnapstackError(.refused, "export \(id) is not of \(device.name)",
                                 remedy: "name an export of the same device")
        }
        guard base.state == .complete else {
            throw SnapstackError(.refused, "export \(id) did not complete", remedy: "finish it by running it again, or take a full export")
        }
        guard let baseEra = base.era, device.cbtBlockSectors != nil else {
            throw SnapstackError(.refused, "\(device.name) has no change tracking to build on export \(id)",
                                 remedy: "take a full export")
        }
        // An interruption is the first thing to say: it is why a grown volume's size differs.
        if !allowFull { try checkTrackingContinuous(device, since: base) }
        // An image holds one device size: a grown or shrunk volume starts a new image, even
        // with --allow-full (which reads every block, but into the same geometry).
        guard base.deviceSizeBytes == device.sizeBytes else {
            throw SnapstackError(.refused, "export \(id) does not match \(device.name) any more",
                                 why: "it is of \(base.deviceSizeBytes) bytes and \(device.name) has \(device.sizeBytes) now (resized, as by lvextend)",
                                 remedy: "take a full export into a new image (--full)")
        }
        guard base.blockSizeBytes == Int64(blockSize) else {
            throw SnapstackError(.refused, "export \(id) does not match \(device.name) any more",
                                 why: "its block size or device size differs", remedy: "take a full export")
        }
        if let era = snapshot.era, baseEra > era {
            throw SnapstackError(.refused, "export \(id) is newer than snapshot \(snapshot.name)",
                                 remedy: "export a snapshot taken after export \(id)'s")
        }
        return base
    }

    /// Checks that `path` may receive this export; returns the manifest of an interrupted run of
    /// the same export, which this run finishes.
    private func checkImage(_ path: FilePath, device: DeviceRecord, snapshot: SnapshotRecord,
                            base: ExportRecord?, replacing: Bool) throws -> ImageManifest? {
        let imageExists = FileManager.default.fileExists(atPath: path.string)
        guard let manifest = try ImageManifest.read(forImage: path) else {
            if imageExists {
                throw SnapstackError(.refused, "\(path) exists and is not a snapstack image",
                                     why: "it has no manifest beside it", remedy: "export to a new path")
            }
            if let base {
                throw SnapstackError(.notFound, "\(path) does not exist",
                                     why: "an incremental export updates the image of export \(base.id)",
                                     remedy: "name that image, or take a full export")
            }
            return nil
        }
        if replacing && base == nil {
            // Only ever an image of the same disk: another disk's backups are never overwritten.
            guard manifest.device.isSameDisk(as: device) else {
                throw SnapstackError(.refused, "\(path) holds an image of \(manifest.device.name), not of \(device.name)",
                                     why: "its recorded identity is another disk's",
                                     remedy: "export to another path, or move that image away")
            }
            let resumable = manifest.state == .incomplete && manifest.device.id == device.id
                && manifest.snapshot.id == snapshot.id && manifest.export.base == nil
            return resumable ? manifest : nil
        }
        guard manifest.device.id == device.id else {
            throw SnapstackError(.refused, "\(path) holds an image of \(manifest.device.name), not of \(device.name)",
                                 remedy: "export to another path")
        }
        if manifest.state == .incomplete {
            guard manifest.snapshot.id == snapshot.id, manifest.export.base == base?.id else {
                let again = manifest.export.base.map { " --since \($0)" } ?? ""
                throw SnapstackError(
                    .refused, "\(path) is incomplete",
                    why: "export \(manifest.export.id) of snapshot \(manifest.snapshot.name)\(again) stopped half-way",
                    remedy: "run that export again to finish it; if its snapshot is gone, take a full export to a new path")
            }
            return manifest
        }
        guard let base else {
            throw SnapstackError(.refused, "\(path) already holds export \(manifest.export.id)",
                                 why: "a full export never overwrites an image",
                                 remedy: "add --since \(manifest.export.id) for an incremental, or export to a new path")
        }
        guard manifest.export.id == base.id else {
            throw SnapstackError(.refused, "\(path) holds export \(manifest.export.id), not export \(base.id)",
                                 remedy: "use --since \(manifest.export.id)")
        }
        guard manifest.blockSize == Self.exportBlockSize(device), manifest.device.sizeBytes == UInt64(device.sizeBytes) else {
            throw SnapstackError(.refused, "\(path) does not match \(device.name)'s size or block size",
                                 remedy: "take a full export to a new path")
        }
        return nil
    }

    private func baseChain(_ destination: ExportDestination) -> [String] {
        guard case .image(let path) = destination, let manifest = try? ImageManifest.read(forImage: path) else { return [] }
        return manifest.export.chain
    }

    // MARK: Image

    private func copyIntoImage(_ path: FilePath, manifest: ImageManifest, engine: CopyEngine, extents: [Extent],
                               fresh: Bool, progress: ((CopyProgress) -> Void)?, cancel: CancellationFlag?) throws -> CopyStatistics {
        // Intent first: from here until the last sync the image is not to be trusted.
        try manifest.write(forImage: path)
        let sums = try ChecksumFile(path: ImageManifest.checksumPath(forImage: path), blockCount: manifest.blockCount, create: true)
        let sink: SparseFileSink
        do {
            sink = try SparseFileSink(path: path, size: manifest.device.sizeBytes, zeroBlocks: fresh ? .leaveHoles : .punchHoles,
                                      permissions: [.ownerReadWrite, .groupRead])
        } catch {
            throw SnapstackError(.failed, "cannot open the image \(path)", why: "\(error)", cause: error)
        }
        let statistics = try engine.run(extents: extents, into: sink,
                                        onBlock: { try sums.set($0.index, $0.digest) },
                                        progress: progress, cancel: cancel)
        try sink.finish()
        try sums.sync()
        var done = manifest
        done.state = .complete
        done.export.completedAt = Date()
        done.checksums.digest = try sums.fileDigest().hex
        try done.write(forImage: path)
        return statistics
    }
}

extension ExportDestination {
    var imagePath: FilePath? {
        if case .image(let path) = self { return path }
        return nil
    }

    var formatName: String {
        switch self {
        case .image: "image"
        case .standardOutput(let format): format.rawValue
        }
    }
}
