import CopyEngine
import Foundation
import Images
import Locking
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// What one backup run does with its image: build on the export the image holds, or read the
/// whole device — never an incremental that cannot be proven to hold every change.
public struct BackupPlan: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Read only the blocks the change tracking recorded since export `base`, the image's last.
        case incremental(base: String)
        /// Read every block; `reason` says why nothing could be built on.
        case full(reason: String)
    }

    public var kind: Kind
    /// The image holds earlier exports of the same disk, which this full export rewrites.
    public var replacesImage: Bool

    /// Decides from the image at the target (its manifest, or nothing there) and what the
    /// state database says of the device and of the image's last export. Throws when the
    /// target must not be written: a file that is no image, or another disk's image.
    static func decide(image path: FilePath, manifest: ImageManifest?, imageExists: Bool,
                              device: DeviceRecord, lastExport: ExportRecord?) throws -> BackupPlan {
        guard let manifest else {
            if imageExists {
                throw SnapstackError(.refused, "\(path) exists and is not a snapstack image",
                                     why: "it has no manifest beside it", remedy: "name another --to, or move that file away")
            }
            return BackupPlan(kind: .full(reason: "there is no image at \(path) yet"), replacesImage: false)
        }
        guard manifest.device.isSameDisk(as: device) else {
            throw SnapstackError(.refused, "\(path) holds backups of \(manifest.device.name) (device \(manifest.device.id)), not of \(device.name)",
                                 why: "its recorded identity is another disk's",
                                 remedy: "name another --to, or move that image away")
        }
        func full(_ reason: String) -> BackupPlan { BackupPlan(kind: .full(reason: reason), replacesImage: true) }
        let last = manifest.export.id
        if manifest.state == .incomplete {
            return full("the image is incomplete: export \(last) stopped half-way")
        }
        if device.cbtBlockSectors == nil {
            return full("\(device.name) has no change tracking (protected with --no-cbt)")
        }
        guard manifest.device.id == device.id, let lastExport, lastExport.deviceID == device.id else {
            return full("change tracking was interrupted: \(device.name) was protected anew since export \(last), "
                        + "so what was written in between is unknown")
        }
        guard lastExport.state == .complete, lastExport.era != nil else {
            return full("export \(last) did not complete or has no era to build on")
        }
        guard lastExport.blockSizeBytes == Int64(Orchestrator.exportBlockSize(device)),
              lastExport.deviceSizeBytes == device.sizeBytes,
              manifest.device.sizeBytes == UInt64(device.sizeBytes) else {
            return full("\(device.name)'s size or change-tracking block changed since export \(last)")
        }
        return BackupPlan(kind: .incremental(base: last), replacesImage: false)
    }
}

/// A scheduled backup as `snapstack backup` runs it: snapshot, export into an image kept
/// current, drop the snapshot, and optionally store the image in a restic repository.
public struct BackupRequest: Sendable {
    public var device: String
    /// The image kept current; its manifest and checksum file sit beside it.
    public var image: FilePath
    public var snapshot = SnapshotOptions()
    public var maxRate: UInt64?
    /// Leave the snapshot in place after the export (default: drop it).
    public var keepSnapshot = false
    /// A restic repository to back the image up into after each export (restic's `--repo`;
    /// its password comes from restic's own environment, e.g. `RESTIC_PASSWORD_FILE`).
    public var resticRepository: String?

    public init(device: String, image: FilePath) {
        self.device = device
        self.image = image
    }
}

/// What a backup did.
public struct BackupOutcome: Sendable {
    public var plan: BackupPlan
    public var snapshot: String
    public var export: ExportOutcome
    /// The restic snapshot id, when the image went into a repository.
    public var resticSnapshot: String?

    /// True when every block was read: a planned full, or tracking that could not be read.
    public var readEverything: Bool {
        if case .full = plan.kind { return true }
        return export.readEverything
    }
}

public enum Backup {
    /// Runs one backup. The state lock is held only as long as each step needs it (exclusive
    /// for the snapshot and the drop, shared for the export's set-up and record, none for its
    /// copy), so that the daemon's store watch can grow the snapshot's store while the export
    /// reads it.
    public static func run(_ request: BackupRequest, stateDirectory: FilePath, lockTimeout: Double,
                           notice: @escaping (String) -> Void,
                           progress: ((CopyProgress) -> Void)? = nil, cancel: CancellationFlag? = nil) throws -> BackupOutcome {
        func open(_ mode: FileLock.Mode) throws -> Orchestrator {
            let orchestrator = try Orchestrator(stateDirectory: stateDirectory, lockTimeout: lockTimeout, mode: mode)
            orchestrator.notice = notice
            return orchestrator
        }

        let plan: BackupPlan
        let snapshotArgument: String
        do {
            let orchestrator = try open(.exclusive)
            let device = try orchestrator.device(named: request.device)
            let manifest = try ImageManifest.read(forImage: request.image)
            let lastExport = try manifest.flatMap { try orchestrator.database.export(id: $0.export.id) }
            plan = try BackupPlan.decide(image: request.image, manifest: manifest,
                                         imageExists: FileManager.default.fileExists(atPath: request.image.string),
                                         device: device, lastExport: lastExport)
            var options = request.snapshot
            if options.name == nil { options.name = "backup-" + Orchestrator.timestampName() }
            let taken = try orchestrator.snapshot([device.name], options: options)
            snapshotArgument = taken.snapshots[0].path
        }
        if case .full(let reason) = plan.kind { notice("full backup of \(request.device): \(reason)") }

        var dropped = request.keepSnapshot
        defer {
            // A failed or cancelled export must not leave its snapshot paying copy-on-write.
            if !dropped { try? open(.exclusive).drop(snapshot: snapshotArgument) }
        }
        let exported: ExportOutcome
        do {
            var export = ExportRequest(snapshot: snapshotArgument, destination: .image(request.image),
                                       maxRate: request.maxRate, replacingImage: plan.replacesImage)
            if case .incremental(let base) = plan.kind {
                export.since = base
                // Tracking that cannot be read (damaged metadata, a missing era layer) turns
                // into a read of every block, said in a notice and in the outcome.
                export.allowFull = true
            }
            exported = try open(.shared).export(export, progress: progress, cancel: cancel)
        }
        let snapshotName = exported.export.snapshot
        if !request.keepSnapshot {
            try open(.exclusive).drop(snapshot: snapshotArgument)
            dropped = true
        }
        let resticSnapshot = try request.resticRepository.map {
            try Restic(repository: $0).backup(image: request.image, tags: ["snapstack", request.device, "export-\(exported.export.id)"])
        }
        return BackupOutcome(plan: plan, snapshot: snapshotName, export: exported, resticSnapshot: resticSnapshot)
    }

}

/// restic, run as a child process: the image, its manifest and its checksum file go into one
/// restic snapshot, so that a restored image can be checked with `snapstack verify`.
struct Restic {
    var repository: String
    var executable = "restic"

    /// `restic backup --json`; returns the new restic snapshot's id.
    func backup(image: FilePath, tags: [String]) throws -> String {
        var arguments = ["--repo", repository, "backup", "--json"]
        for tag in tags { arguments += ["--tag", tag] }
        arguments += [image.string, ImageManifest.path(forImage: image).string,
                      ImageManifest.checksumPath(forImage: image).string]
        let (status, stdout, stderr) = try run(arguments)
        guard status == 0 else {
            throw SnapstackError(.failed, "restic could not back up \(image) into \(repository)",
                                 why: "restic exited \(status): \(stderr.lastLine)",
                                 remedy: "check the repository exists (`restic init`) and RESTIC_PASSWORD_FILE is set; the image itself is complete")
        }
        // The summary is the last JSON line: {"message_type":"summary",...,"snapshot_id":"..."}.
        for line in stdout.split(separator: "\n").reversed() {
            if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
               object["message_type"] as? String == "summary", let id = object["snapshot_id"] as? String {
                return id
            }
        }
        throw SnapstackError(.failed, "restic backed up \(image) but named no snapshot",
                             why: "its output had no summary line", remedy: "check with `restic snapshots`")
    }

    private func run(_ arguments: [String]) throws -> (Int32, String, String) {
        let child: ChildProcess
        do { child = try ChildProcess.run("/usr/bin/env", [executable] + arguments) } catch {
            throw SnapstackError(.failed, "cannot run restic", why: "\(error)", remedy: "install it (apt install restic)", cause: error)
        }
        if child.status == 127 {
            throw SnapstackError(.failed, "cannot run restic", why: "it is not installed", remedy: "install it (apt install restic)")
        }
        return (child.status, child.stdout, child.stderr)
    }
}

private extension String {
    var lastLine: String {
        split(separator: "\n").last.map { String($0).trimmingCharacters(in: .whitespaces) } ?? "(no message)"
    }
}
