import Foundation
import Images
@testable import Snapstack
import SnapstackErrors
import StateDatabase
import SystemPackage
import Testing

/// Which backups read every block: the plan `snapstack backup` makes from the image at its
/// target and the state database's records.
@Suite struct BackupPlanTests {
    static let size: Int64 = 64 << 20
    static let path = FilePath("/srv/backup/data.img")

    static func device(id: String = "dev00001", fsUUID: String? = "6f1e-aa", cbt: Bool = true) -> DeviceRecord {
        DeviceRecord(id: id, name: "data", state: .protected, sourcePath: "/dev/vdb", sourceMajor: 254, sourceMinor: 16,
                     sizeBytes: size, fsUUID: fsUUID, cbtBlockSectors: cbt ? 128 : nil, eraMetadataPath: cbt ? "/x.era" : nil)
    }

    static func manifest(export id: String = "e0000001", device: String = "dev00001", name: String = "data",
                         fsUUID: String? = "6f1e-aa", state: ImageManifest.State = .complete) -> ImageManifest {
        ImageManifest(
            state: state,
            export: .init(id: id, kind: "full", base: nil, chain: [id], createdAt: Date(), completedAt: Date()),
            device: .init(id: device, name: name, sizeBytes: UInt64(size), fsUUID: fsUUID),
            snapshot: .init(id: "s1", name: "backup-1", era: 3, createdAt: Date()),
            sinceEra: nil, blockSize: 65536, checksumFile: "data.img.sums")
    }

    static func export(id: String = "e0000001", device: String = "dev00001", state: ExportState = .complete,
                       blockSize: Int64 = 65536) -> ExportRecord {
        ExportRecord(id: id, deviceID: device, snapshotID: "s1", snapshotName: "backup-1", kind: .full, state: state,
                     era: 3, blockSizeBytes: blockSize, deviceSizeBytes: size, imagePath: path.string, format: "image")
    }

    func plan(_ manifest: ImageManifest?, exists: Bool = true, device: DeviceRecord = device(),
              export: ExportRecord? = export()) throws -> BackupPlan {
        try BackupPlan.decide(image: Self.path, manifest: manifest, imageExists: exists, device: device, lastExport: export)
    }

    func fullReason(_ plan: BackupPlan) -> String? {
        if case .full(let reason) = plan.kind { return reason }
        return nil
    }

    @Test func buildsOnTheImagesLastExport() throws {
        let plan = try plan(Self.manifest())
        #expect(plan.kind == .incremental(base: "e0000001"))
        #expect(!plan.replacesImage)
    }

    @Test func noImageIsAFullThatReplacesNothing() throws {
        let plan = try plan(nil, exists: false, export: nil)
        #expect(fullReason(plan)?.contains("no image") == true)
        #expect(!plan.replacesImage)
    }

    @Test func protectedAnewReadsEverything() throws {
        // unprotect + protect: a new record of the same disk; the old export is gone with it.
        let plan = try plan(Self.manifest(device: "dev0old0"), device: Self.device(id: "dev0new0"), export: nil)
        #expect(fullReason(plan)?.contains("protected anew") == true)
        #expect(plan.replacesImage)
    }

    @Test func everyOtherReasonToReadEverything() throws {
        #expect(fullReason(try plan(Self.manifest(state: .incomplete)))?.contains("incomplete") == true)
        #expect(fullReason(try plan(Self.manifest(), device: Self.device(cbt: false)))?.contains("no change tracking") == true)
        #expect(fullReason(try plan(Self.manifest(), export: nil)) != nil)
        #expect(fullReason(try plan(Self.manifest(), export: Self.export(state: .running)))?.contains("did not complete") == true)
        #expect(fullReason(try plan(Self.manifest(), export: Self.export(blockSize: 1 << 20)))?.contains("changed") == true)
        // An export id on record for another device is no base for this one.
        #expect(fullReason(try plan(Self.manifest(), export: Self.export(device: "dev0ther")))?.contains("protected anew") == true)
    }

    @Test func neverOverwritesAnotherDisksImageOrAStrangeFile() {
        #expect(throws: SnapstackError.self) { try plan(Self.manifest(device: "dev0old0", fsUUID: "other"), device: Self.device(id: "dev0new0")) }
        #expect(throws: SnapstackError.self) { try plan(Self.manifest(device: "dev0old0", name: "logs"), device: Self.device(id: "dev0new0")) }
        // Without any identity in common, the same name is not proof of the same disk.
        #expect(throws: SnapstackError.self) {
            try plan(Self.manifest(device: "dev0old0", fsUUID: nil), device: Self.device(id: "dev0new0", fsUUID: nil))
        }
        #expect(throws: SnapstackError.self) { try plan(nil, exists: true, export: nil) }
    }
}
