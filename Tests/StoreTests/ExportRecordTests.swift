import Foundation
import Store
import Testing

private func withStore(_ body: (Store) throws -> Void) throws {
    let root = FileManager.default.temporaryDirectory
        .appendingPathComponent("snapstack-exports-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: root) }
    try body(try Store(directory: root))
}

private func device(_ name: String) -> DeviceRecord {
    DeviceRecord(
        name: name, state: .protected, sourcePath: "/dev/\(name)", sourceMajor: 7, sourceMinor: 1,
        sizeBytes: 1 << 30, cbtBlockSectors: 128, eraMetadataPath: "/var/lib/snapstack/cbt/x.era")
}

@Test func exportChainRoundTripsAndOrdersByCreation() throws {
    try withStore { store in
        let data = device("data")
        try store.insert(data)
        let full = ExportRecord(
            deviceID: data.id, snapshotID: "aaaa0001", snapshotName: "monday", kind: .full, era: 3,
            blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: "/backup/data.img", format: "image",
            createdAt: Date(timeIntervalSinceNow: -60))
        try store.save(full)
        var incremental = ExportRecord(
            deviceID: data.id, snapshotID: "aaaa0002", snapshotName: "tuesday", kind: .incremental,
            baseExportID: full.id, era: 7, sinceEra: 3, blockSizeBytes: 65536, deviceSizeBytes: 1 << 30,
            imagePath: "/backup/data.img", format: "image")
        try store.save(incremental)
        incremental.state = .complete
        incremental.bytesRead = 4 << 20
        incremental.completedAt = Date()
        try store.save(incremental)

        #expect(try store.exports(deviceID: data.id).map(\.id) == [full.id, incremental.id])
        let stored = try #require(try store.export(id: incremental.id))
        #expect(stored == ExportRecord(
            id: incremental.id, deviceID: data.id, snapshotID: "aaaa0002", snapshotName: "tuesday",
            kind: .incremental, state: .complete, baseExportID: full.id, era: 7, sinceEra: 3,
            blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: "/backup/data.img", format: "image",
            bytesRead: 4 << 20, createdAt: incremental.createdAt, completedAt: incremental.completedAt))
        #expect(stored.state == .complete)
    }
}

@Test func unprotectingADeviceForgetsItsExportsOnly() throws {
    try withStore { store in
        let kept = device("kept"), gone = device("gone")
        try store.insert(kept)
        try store.insert(gone)
        for owner in [kept, gone] {
            try store.save(ExportRecord(
                deviceID: owner.id, snapshotID: "s", snapshotName: "s", kind: .full, era: 1,
                blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: nil, format: "raw"))
        }
        try store.deleteDevice(id: gone.id)
        #expect(try store.exports().map(\.deviceID) == [kept.id])
    }
}

@Test func anExportNeedsItsDevice() throws {
    try withStore { store in
        #expect(throws: (any Error).self) {
            try store.save(ExportRecord(
                deviceID: "nosuchid", snapshotID: "s", snapshotName: "s", kind: .full, era: 1,
                blockSizeBytes: 65536, deviceSizeBytes: 1 << 30, imagePath: nil, format: "raw"))
        }
    }
}
