import Foundation
import Locking
internal import StateDatabase
import SystemPackage

/// The names snapstack's state records — protected devices, snapshots as commands take them
/// (`NAME-SNAP`) and export ids — read for shell completion. The shell runs this while the user
/// presses TAB, so it never creates or upgrades state, never throws, and never waits on the state
/// lock for more than `lockWait`: on any problem there are no names.
public struct RecordedNames: Sendable, Equatable {
    public var devices: [String] = []
    public var snapshots: [String] = []
    public var exports: [String] = []

    public init(devices: [String] = [], snapshots: [String] = [], exports: [String] = []) {
        self.devices = devices
        self.snapshots = snapshots
        self.exports = exports
    }

    /// The names on record in `stateDirectory`, each list sorted; none when there is no state.
    public static func read(stateDirectory: FilePath, lockWait: Double = 0.2) -> RecordedNames {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: stateDirectory.string, isDirectory: &isDirectory), isDirectory.boolValue,
              FileManager.default.fileExists(atPath: StateDatabase.databasePath(in: stateDirectory.string))
        else { return RecordedNames() }
        // The shared lock keeps a half-done change out of view when it is free at once; a
        // command holding it for long (a merge, a protect) must not stall the shell, and SQLite
        // gives a consistent read without it, so the names are read either way.
        let lock = try? FileLock(directory: stateDirectory, mode: .shared, timeout: lockWait)
        defer { withExtendedLifetime(lock) {} }
        do {
            guard let database = try StateDatabase.open(readOnly: stateDirectory.string, upgrading: false) else {
                return RecordedNames()
            }
            let devices = try database.devices()
            return RecordedNames(
                devices: devices.map(\.name).sorted(),
                snapshots: try devices.flatMap { device in
                    try database.snapshots(deviceID: device.id).map { "\(device.name)-\($0.name)" }
                }.sorted(),
                exports: try database.exports().map(\.id).sorted())
        } catch {
            return RecordedNames()
        }
    }
}
