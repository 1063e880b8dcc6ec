import BlockIO
import CopyEngine
import Foundation
import SnapstackErrors
import SystemPackage

/// What `verify` found.
public struct VerifyReport: Sendable {
    public var image: FilePath
    public var manifest: ImageManifest
    public var blocksChecked: UInt64
    public var bytesRead: UInt64
    /// The first block whose bytes do not match their checksum, and how many do not.
    public var firstBadBlock: UInt64?
    public var badBlocks: UInt64
    public var seconds: Double

    public var isSound: Bool { firstBadBlock == nil }
}

/// What `restore` did.
public struct RestoreReport: Sendable {
    public var image: FilePath
    public var device: FilePath
    public var manifest: ImageManifest
    public var written: CopyStatistics
    public var verified: VerifyReport
}

/// Operations on exported images that need neither the state nor device-mapper: they run on
/// the machine that keeps the backups as well as on the one that made them.
public enum Image {
    /// Reads a manifest and checks what can be checked without reading the image: it exists,
    /// it is complete, and the checksum file is the one the manifest names.
    public static func openComplete(_ image: FilePath) throws -> (ImageManifest, ChecksumFile) {
        guard let manifest = try ImageManifest.read(forImage: image) else {
            if FileManager.default.fileExists(atPath: image.string) {
                throw SnapstackError(.notFound, "\(image) has no manifest",
                                     why: "expected \(ImageManifest.path(forImage: image)) beside it",
                                     remedy: "name an image that `snapstack export` wrote")
            }
            throw SnapstackError(.notFound, "no image \(image.string.replacingNewlines)", remedy: "check the path")
        }
        guard manifest.state == .complete else {
            let again = manifest.export.base.map { " --since \($0)" } ?? ""
            throw SnapstackError(.verificationFailed, "\(image) is incomplete",
                                 why: "export \(manifest.export.id) of \(manifest.device.name)-\(manifest.snapshot.name)\(again) stopped before it finished",
                                 remedy: "run that export again to finish it")
        }
        let sums = try ChecksumFile(path: ImageManifest.checksumPath(forImage: image), blockCount: manifest.blockCount, create: false)
        let digest = try sums.fileDigest().hex
        guard manifest.checksums.digest == digest else {
            throw SnapstackError(.verificationFailed, "the checksum file of \(image) is damaged",
                                 why: "its digest is \(digest), the manifest recorded \(manifest.checksums.digest ?? "none")",
                                 remedy: "the image cannot be checked; take a new full export")
        }
        let size = try fileSize(image)
        guard size == manifest.device.sizeBytes else {
            throw SnapstackError(.verificationFailed, "\(image) has the wrong size",
                                 why: "\(size) bytes, the manifest says \(manifest.device.sizeBytes)")
        }
        return (manifest, sums)
    }

    /// Re-reads the image and compares every block with its recorded checksum.
    public static func verify(_ image: FilePath, progress: ((CopyProgress) -> Void)? = nil,
                              cancel: CancellationFlag? = nil) throws -> VerifyReport {
        let (manifest, sums) = try openComplete(image)
        return try compare(image, against: manifest, sums: sums, progress: progress, cancel: cancel, reportAs: image)
    }

    /// Writes an image to a block device, then reads the device back against the image's
    /// checksums. Refuses a device that is mounted, open, held or too small, and any of
    /// snapstack's own devices' members.
    public static func restore(_ image: FilePath, to device: FilePath, progress: ((CopyProgress) -> Void)? = nil,
                               cancel: CancellationFlag? = nil) throws -> RestoreReport {
        try restore(image, to: device, progress: progress, cancel: cancel, betweenCheckAndOpen: {})
    }

    /// `restore`, with `betweenCheckAndOpen` run after the device's checks and before its
    /// open: where a test swaps the path to show that what is written is what was checked.
    @_spi(Testing)
    public static func restore(_ image: FilePath, to device: FilePath, progress: ((CopyProgress) -> Void)? = nil,
                               cancel: CancellationFlag? = nil, betweenCheckAndOpen: () throws -> Void) throws -> RestoreReport {
        let (manifest, sums) = try openComplete(image)
        let facts: BlockDeviceFacts
        do { facts = try BlockDeviceFacts.read(device) } catch {
            throw SnapstackError(.notFound, "cannot restore to \(device.string.replacingNewlines)", why: "\(error)",
                                 remedy: "name a block device (lsblk lists them)")
        }
        let usage: DeviceUsage
        do { usage = try DeviceUse.usage(of: device) } catch {
            throw SnapstackError(.failed, "cannot tell whether \(device) is in use", why: "\(error)")
        }
        if let reason = usage.reason {
            throw SnapstackError(.refused, "cannot restore to \(device)", why: reason,
                                 remedy: "unmount it and stop what uses it; to restore a protected disk, restore to /dev/mapper/snapstack-NAME")
        }
        if let opener = DeviceUse.openers(of: facts.number).first {
            throw SnapstackError(.refused, "cannot restore to \(device)", why: "it is open by process \(opener)",
                                 remedy: "stop what uses it first")
        }
        guard facts.size.rawValue >= manifest.device.sizeBytes else {
            throw SnapstackError(.refused, "cannot restore to \(device)",
                                 why: "it holds \(facts.size.rawValue) bytes, the image \(manifest.device.sizeBytes)",
                                 remedy: "restore to a device at least as large")
        }

        try betweenCheckAndOpen()

        let written: CopyStatistics
        do {
            // Reading the image checks it on the way: a damaged block is never written.
            let engine = try CopyEngine(source: image, options: CopyOptions(blockSize: manifest.blockSize))
            let sink = try BlockDeviceSink(path: device)
            // The path was checked, the descriptor is written: they must be the same device
            // (a udev rename, a symbolic link replaced, a hot swap in between).
            guard sink.device == facts.number else {
                throw SnapstackError(.refused, "cannot restore to \(device)",
                                     why: "it was \(facts.number) when checked and is \(sink.device.map { "\($0)" } ?? "not a block device") now",
                                     remedy: "the path changed under the restore; check which device it names and run it again")
            }
            written = try engine.run(
                extents: [Extent(offset: 0, length: manifest.device.sizeBytes)], into: sink,
                onBlock: { block in
                    if try sums.digests(block.index..<(block.index + 1))[0] != block.digest {
                        throw SnapstackError(.verificationFailed, "block \(block.index) of \(image) does not match its checksum",
                                             why: "the image is damaged at byte \(block.offset)",
                                             remedy: "\(device) was written only up to that block; restore from another copy")
                    }
                }, progress: progress, cancel: cancel)
            try sink.finish()
        } catch let error as SnapstackError {
            throw error
        } catch {
            throw SnapstackError(.failed, "restoring \(image) to \(device) failed", why: "\(error)",
                                 remedy: "the device holds part of the image; run restore again", cause: error)
        }
        let verified = try compare(device, against: manifest, sums: sums, progress: progress, cancel: cancel, reportAs: device)
        if let bad = verified.firstBadBlock {
            throw SnapstackError(.verificationFailed, "\(device) does not read back as \(image)",
                                 why: "block \(bad) differs (\(verified.badBlocks) blocks in all)",
                                 remedy: "check the device for errors (dmesg) and restore again")
        }
        return RestoreReport(image: image, device: device, manifest: manifest, written: written, verified: verified)
    }

    /// Reads `source`'s first `manifest.device.sizeBytes` bytes and compares each block with `sums`.
    static func compare(_ source: FilePath, against manifest: ImageManifest, sums: ChecksumFile,
                        progress: ((CopyProgress) -> Void)?, cancel: CancellationFlag?, reportAs: FilePath) throws -> VerifyReport {
        let started = ContinuousClock.now
        var first: UInt64?
        var bad: UInt64 = 0
        var checked: UInt64 = 0
        // Expected digests are read a run at a time, not per block.
        var expected: [Digest128] = []
        var expectedFirst: UInt64 = 0
        let statistics: CopyStatistics
        do {
            let engine = try CopyEngine(source: source, options: CopyOptions(blockSize: manifest.blockSize))
            statistics = try engine.run(
                extents: [Extent(offset: 0, length: manifest.device.sizeBytes)], into: NullSink(),
                onBlock: { block in
                    if block.index < expectedFirst || block.index >= expectedFirst + UInt64(expected.count) {
                        expectedFirst = block.index
                        expected = try sums.digests(block.index..<min(block.index + 4096, manifest.blockCount))
                    }
                    checked += 1
                    if expected[Int(block.index - expectedFirst)] != block.digest {
                        bad += 1
                        if first == nil { first = block.index }
                    }
                }, progress: progress, cancel: cancel)
        } catch let error as SnapstackError {
            throw error
        } catch {
            throw SnapstackError(.failed, "cannot read \(reportAs)", why: "\(error)", cause: error)
        }
        let elapsed = (ContinuousClock.now - started).components
        return VerifyReport(image: reportAs, manifest: manifest, blocksChecked: checked, bytesRead: statistics.bytesRead,
                            firstBadBlock: first, badBlocks: bad,
                            seconds: Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18)
    }

    static func fileSize(_ path: FilePath) throws -> UInt64 {
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path.string)
            return (attributes[.size] as? NSNumber)?.uint64Value ?? 0
        } catch {
            throw SnapstackError(.notFound, "cannot read \(path)", why: "\(error)")
        }
    }
}
