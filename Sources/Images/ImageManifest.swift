import BlockIO
import CopyEngine
import Foundation
import Locking
import SnapstackErrors
import SystemPackage

/// The manifest beside an exported image (`IMAGE.manifest`, JSON): which device and snapshot the
/// image holds, which export wrote it last and on top of which, and where the per-block
/// checksums are. An image is only trusted when its manifest says `complete`.
///
/// The manifest is replaced atomically (write a temporary file, fsync, rename, fsync the
/// directory): after a crash it is either the old one or the new one, never half of each.
public struct ImageManifest: Codable, Sendable, Equatable {
    public static let formatName = "snapstack-image"
    public static let currentVersion = 1

    public enum State: String, Codable, Sendable {
        /// Every block of the image matches the export's snapshot.
        case complete
        /// An export was writing when it stopped: the image mixes two snapshots and must not be
        /// used until the same export is run again.
        case incomplete
    }

    public struct Export: Codable, Sendable, Equatable {
        public var id: String
        public var kind: String
        /// The export the image held before this one was applied (incrementals only).
        public var base: String?
        /// Every export applied to the image, the first full one first.
        public var chain: [String]
        public var createdAt: Date
        public var completedAt: Date?

        public init(id: String, kind: String, base: String?, chain: [String], createdAt: Date, completedAt: Date?) {
            self.id = id
            self.kind = kind
            self.base = base
            self.chain = chain
            self.createdAt = createdAt
            self.completedAt = completedAt
        }
    }

    public struct Device: Codable, Sendable, Equatable {
        public var id: String
        public var name: String
        public var sizeBytes: UInt64
        public var wwn: String?
        public var serial: String?
        public var partUUID: String?
        public var fsUUID: String?

        public init(id: String, name: String, sizeBytes: UInt64, wwn: String? = nil, serial: String? = nil,
                    partUUID: String? = nil, fsUUID: String? = nil) {
            self.id = id
            self.name = name
            self.sizeBytes = sizeBytes
            self.wwn = wwn
            self.serial = serial
            self.partUUID = partUUID
            self.fsUUID = fsUUID
        }
    }

    public struct Snapshot: Codable, Sendable, Equatable {
        public var id: String
        public var name: String
        /// The snapshot's first era: an incremental on top of this image reads from it.
        public var era: Int64?
        public var createdAt: Date

        public init(id: String, name: String, era: Int64?, createdAt: Date) {
            self.id = id
            self.name = name
            self.era = era
            self.createdAt = createdAt
        }
    }

    public struct Checksums: Codable, Sendable, Equatable {
        /// `xxh3-128`: one XXH3-128 digest (16 bytes, canonical order) per block.
        public var algorithm: String
        /// The checksum file's name, in the image's directory.
        public var file: String
        /// XXH3-128 of the checksum file, so that a damaged checksum file is told from a damaged image.
        public var digest: String?
    }

    public var format: String
    public var version: Int
    public var state: State
    public var export: Export
    public var device: Device
    public var snapshot: Snapshot
    /// The first era an incremental read; nil for a full export.
    public var sinceEra: Int64?
    public var blockSize: Int
    public var blockCount: UInt64
    public var checksums: Checksums

    public init(state: State, export: Export, device: Device, snapshot: Snapshot, sinceEra: Int64?,
                blockSize: Int, checksumFile: String, checksumDigest: String? = nil) {
        format = Self.formatName
        version = Self.currentVersion
        self.state = state
        self.export = export
        self.device = device
        self.snapshot = snapshot
        self.sinceEra = sinceEra
        self.blockSize = blockSize
        blockCount = BlockGeometry.blockCount(deviceSize: device.sizeBytes, blockSize: blockSize)
        checksums = Checksums(algorithm: "xxh3-128", file: checksumFile, digest: checksumDigest)
    }

    // MARK: Files

    /// The manifest's path for an image.
    public static func path(forImage image: FilePath) -> FilePath {
        FilePath(image.string + ".manifest")
    }

    /// The checksum file's path for an image.
    public static func checksumPath(forImage image: FilePath) -> FilePath {
        FilePath(image.string + ".sums")
    }

    /// The lock file of an image's writer.
    public static func lockPath(forImage image: FilePath) -> FilePath {
        FilePath(image.string + ".lock")
    }

    /// Taken by the one process that writes an image (an `export` into it, an `apply` to it)
    /// from its first look at the manifest to its last write: two writers would interleave
    /// blocks, checksums and manifests. Not waited for: the other writer may run for hours.
    public static func lockWriter(ofImage image: FilePath) throws -> ImageWriterLock {
        try ImageWriterLock(image: image)
    }

    /// Reads the manifest of `image`; nil when there is none.
    public static func read(forImage image: FilePath) throws -> ImageManifest? {
        let path = self.path(forImage: image)
        guard FileManager.default.fileExists(atPath: path.string) else { return nil }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path.string))
        } catch {
            throw SnapstackError(.failed, "cannot read the manifest \(path)", why: "\(error)", cause: error)
        }
        return try decode(data, source: path.string)
    }

    /// Parses a manifest, checking that it is one this build understands.
    public static func decode(_ data: Data, source: String) throws -> ImageManifest {
        let manifest: ImageManifest
        do {
            manifest = try decoder.decode(ImageManifest.self, from: data)
        } catch {
            throw SnapstackError(.failed, "\(source) is not a snapstack image manifest",
                                 why: "\(error)", remedy: "check the path; a damaged manifest needs a new full export",
                                 cause: error)
        }
        guard manifest.format == formatName else {
            throw SnapstackError(.failed, "\(source) is not a snapstack image manifest",
                                 why: "its format is \"\(manifest.format)\"")
        }
        guard manifest.version <= currentVersion else {
            throw SnapstackError(.failed, "\(source) was written by a newer snapstack",
                                 why: "manifest version \(manifest.version), this build reads up to \(currentVersion)",
                                 remedy: "use a newer snapstack")
        }
        do {
            _ = try BlockGeometry(blockSize: manifest.blockSize, deviceSize: manifest.device.sizeBytes)
        } catch {
            throw SnapstackError(.failed, "\(source) is inconsistent", why: "\(error)",
                                 remedy: "a damaged manifest needs a new full export")
        }
        guard manifest.blockCount == BlockGeometry.blockCount(deviceSize: manifest.device.sizeBytes, blockSize: manifest.blockSize)
        else {
            throw SnapstackError(.failed, "\(source) is inconsistent",
                                 why: "block size \(manifest.blockSize) and \(manifest.blockCount) blocks do not cover \(manifest.device.sizeBytes) bytes")
        }
        return manifest
    }

    public func encoded() throws -> Data {
        try Self.encoder.encode(self)
    }

    /// Replaces the manifest of `image` atomically and durably.
    public func write(forImage image: FilePath) throws {
        let path = Self.path(forImage: image)
        do {
            try AtomicFile.replace(path, with: Array(try encoded() + Data("\n".utf8)))
        } catch {
            throw SnapstackError(.failed, "cannot write the manifest \(path)", why: "\(error)", cause: error)
        }
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()
}

/// The lock of an image's one writer, `IMAGE.lock` beside it. The empty file stays while the
/// image does (removing it would race with the next writer); a writer that was refused before
/// it made anything removes it again, so that a refusal leaves the directory as it was. (A
/// writer that holds the lock is the only one past it: a second one fails at once, it does not
/// wait on the old file.)
public final class ImageWriterLock {
    private let lock: FileLock
    private let image: FilePath

    init(image: FilePath) throws {
        self.image = image
        let path = ImageManifest.lockPath(forImage: image)
        lock = try FileLock(directory: path.containingDirectory, name: path.lastComponent?.string ?? "",
                            mode: .exclusive, timeout: 0, owner: "another export or apply", subject: image.string,
                            remedy: "wait for it to finish; two writers of one image would mix their blocks")
    }

    deinit {
        let manager = FileManager.default
        if !manager.fileExists(atPath: image.string), !manager.fileExists(atPath: ImageManifest.path(forImage: image).string) {
            unlink(ImageManifest.lockPath(forImage: image).string)
        }
        withExtendedLifetime(lock) {}
    }
}
