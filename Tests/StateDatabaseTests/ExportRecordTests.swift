import Foundation
import StateDatabase
import Testing

private func withDatabase(_ body: (StateDatabase) throws -> Void) throws {
    let root = FileManager.default.temporaryDirectory
        .appendingPathComponent("snapstack-exports-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    try body(try StateDatabase(directory: root))
}

private func device(_ name: String) -> DeviceRecord {
    DeviceRecord(
        name: name, state: .protected, sourcePath: "/dev/\(name)", sourceMajor: 7, sourceMinor: 1,
        sizeBytes: 1 << 30, cbtBlockSectors: 128, eraMetadataPath: "/var/lib/snapstack/cbt/x.era")
}

@Test func exportChainRoundTripsAndOrdersByCreation() throws {
    try withDatabase { database in
        let data = device("data")
        try database.insert(data)
        let full = ExportRecord(
            deviceID: data.id, snapshotID: "aaaa0001", snapshotName: "monday", kind: .full, era: 3,
            blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: "/backup/data.img", format: "image",
            createdAt: Date(timeIntervalSinceNow: -60))
        try database.save(full)
        var incremental = ExportRecord(
            deviceID: data.id, snapshotID: "aaaa0002", snapshotName: "tuesday", kind: .incremental,
            baseExportID: full.id, era: 7, sinceEra: 3, blockSizeBytes: 65536, deviceSizeBytes: 1 << 30,
            imagePath: "/backup/data.img", format: "image")
        try database.save(incremental)
        incremental.state = .complete
        incremental.bytesRead = 4 << 20
        incremental.completedAt = Date()
        try database.save(incremental)

        #expect(try database.exports(deviceID: data.id).map(\.id) == [full.id, incremental.id])
        let stored = try #require(try database.export(id: incremental.id))
        #expect(stored == ExportRecord(
            id: incremental.id, deviceID: data.id, snapshotID: "aaaa0002", snapshotName: "tuesday",
            kind: .incremental, state: .complete, baseExportID: full.id, era: 7, sinceEra: 3,
            blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: "/backup/data.img", format: "image",
            bytesRead: 4 << 20, createdAt: incremental.createdAt, completedAt: incremental.completedAt))
        #expect(stored.state == .complete)
    }
}

@Test func unprotectingADeviceForgetsItsExportsOnly() throws {
    try withDatabase { database in
        let kept = device("kept"), gone = device("gone")
        try database.insert(kept)
        try database.insert(gone)
        for owner in [kept, gone] {
            try database.save(ExportRecord(
                deviceID: owner.id, snapshotID: "s", snapshotName: "s", kind: .full, era: 1,
                blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: nil, format: "raw"))
        }
        try database.deleteDevice(id: gone.id)
        #expect(try database.exports().map(\.deviceID) == [kept.id])
    }
}

@Test func anExportNeedsItsDevice() throws {
    try withDatabase { database in
        #expect(throws: (any Error).self) {
            try database.save(ExportRecord(
                deviceID: "nosuchid", snapshotID: "s", snapshotName: "s", kind: .full, era: 1,
                blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: nil, format: "raw"))
        }
    }
}
