import BlockIO
import ChangeTracking
import CopyEngine
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// The changed ranges of a device, for `snapstack changes`.
public struct ChangeList: Sendable {
    public var device: DeviceSummary
    public var sinceEra: Int64
    /// The export `--since` named, if it named one.
    public var sinceExport: String?
    public var blockSize: Int
    public var ranges: [Range<UInt64>]

    public var changedBlocks: UInt64 { ranges.reduce(0) { $0 + UInt64($1.count) } }
}

extension Orchestrator {
    /// The blocks of device `name` written since an export's snapshot or since an era. An
    /// argument that is an export's id names that export; otherwise it must be an era number.
    public func changes(of name: String, since: String) throws -> ChangeList {
        let device = try self.device(named: name)
        let era: Int64
        var export: String?
        if let record = try database.export(id: since) {
            guard record.deviceID == device.id else {
                throw SnapstackError(.refused, "export \(since) is not of \(device.name)")
            }
            guard let recordEra = record.era else {
                throw SnapstackError(.refused, "export \(since) has no era", why: "it was taken without change tracking")
            }
            era = recordEra
            export = record.id
        } else if let number = Int64(since), number >= 0 {
            era = number
        } else {
            throw SnapstackError(.notFound, "\"\(since.replacingNewlines)\" is neither an export id nor an era number",
                                 remedy: "`snapstack exports` lists exports; `snapstack devices -o +era` shows eras")
        }
        return ChangeList(device: try summary(of: device), sinceEra: era, sinceExport: export, blockSize: Self.exportBlockSize(device),
                          ranges: try changedBlocks(of: device, since: era))
    }

    /// Every export on record, oldest first.
    public func exports() throws -> [ExportSummary] {
        let names = Dictionary(uniqueKeysWithValues: try database.devices().map { ($0.id, $0.name) })
        return try database.exports().map { ExportSummary($0, device: names[$0.deviceID] ?? $0.deviceID) }
    }
}
