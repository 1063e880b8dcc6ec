import BlockIO
import Foundation
import Testing
@testable import Policy

/// Properties of a partition as udev describes one on a virtio disk.
private let partition: [String: String] = [
    "KERNEL": "vdb1", "DEVNAME": "/dev/vdb1", "DEVTYPE": "partition", "ID_SERIAL": "backup-0042",
    "ID_PART_ENTRY_NUMBER": "1", "ID_FS_TYPE": "ext4", "ID_FS_UUID": "0b9a6f1e-37a2-4c1e-9d0b-5f2c4c3b8a11",
    "ID_PATH": "pci-0000:00:04.0",
]

private func parse(_ text: String) throws(PolicyError) -> Policy { try Policy(parsing: text, file: "test.conf") }

/// The error a text gives, or a failure when it parses.
private func failure(_ text: String) -> PolicyError? {
    do { _ = try parse(text) } catch { return error }
    return nil
}

@Suite struct ParsingTests {
    @Test func emptyFileHasNoRules() throws {
        #expect(try parse("").rules.isEmpty)
        #expect(try parse("# only a comment\n").rules.isEmpty)
        #expect(try parse("rules:\n").rules.isEmpty)
    }

    @Test func fullExample() throws {
        let policy = try parse("""
            version: 1
            rules:
              - name: no system disk
                match:
                  ID_PATH: "pci-0000:00:1f.2-*"
                exclude: true
              - name: backup disks
                match:
                  ID_SERIAL: ["backup-*", "archive-*"]
                  ID_FS_TYPE: ext4
                  min-size: 1M
                  max-size: 4T
                protect:
                  name: "bk-${ID_SERIAL}"
                  cbt-block: 256K
              - match: {DEVTYPE: disk}
                protect: {no-cbt: true}
            stores:
              threshold: 75%
              grow-by: 1G
              max-size: 64G
              interval: 2s
            """)
        #expect(policy.rules.count == 3)
        #expect(policy.rules[0].action == .exclude)
        #expect(policy.rules[0].line == 3)
        #expect(policy.rules[1].label == "backup disks")
        #expect(policy.rules[1].properties.map(\.property) == ["ID_SERIAL", "ID_FS_TYPE"])
        #expect(policy.rules[1].minimumSize == .mebibytes(1))
        #expect(policy.rules[1].maximumSize == Bytes(4 << 40))
        guard case .protect(let action) = policy.rules[1].action else { Issue.record("not protect"); return }
        #expect(action.cbtBlock == .kibibytes(256))
        #expect(action.name.source == "bk-${ID_SERIAL}")
        #expect(try parse("rules:\n  - protect: {cbt-block: auto}\n").rules[0].action
                    == .protect(ProtectAction(name: try NameTemplate(ProtectAction.defaultNameTemplate), cbtBlock: .zero)))
        guard case .protect(let plain) = policy.rules[2].action else { Issue.record("not protect"); return }
        #expect(plain.cbtBlock == nil)
        #expect(plain.name.source == ProtectAction.defaultNameTemplate)
        #expect(policy.stores.threshold == 0.75)
        #expect(policy.stores.step == .gibibytes(1))
        #expect(policy.stores.limit == .gibibytes(64))
        #expect(policy.stores.pollInterval == .seconds(2))
        #expect(policy.stores.enabled)
    }

    @Test func storeDefaults() throws {
        let stores = try parse("stores:\n  grow-by: double\n  watch: no\n").stores
        #expect(stores.step == nil)
        #expect(!stores.enabled)
        #expect(stores.threshold == 0.8)
        #expect(try parse("stores:\n  threshold: 0.9\n  interval: 500ms\n").stores.pollInterval == .milliseconds(500))
    }

    @Test func metricsSection() throws {
        #expect(try parse("").metrics == MetricsPolicy(file: nil, interval: .seconds(30)))
        #expect(try parse("metrics:\n").metrics.file == nil)
        let metrics = try parse("metrics:\n  file: /var/lib/prometheus/node-exporter/snapstack.prom\n  interval: 1m\n").metrics
        #expect(metrics == MetricsPolicy(file: "/var/lib/prometheus/node-exporter/snapstack.prom", interval: .seconds(60)))
        #expect(try parse("metrics: {file: /run/a.prom}\n").metrics.interval == .seconds(30))
    }

    @Test func metricsErrorsNameTheirPlace() {
        #expect(failure("metrics:\n  file: snapstack.prom\n") == PolicyError(
            file: "test.conf", line: 2, column: 9,
            reason: "the metrics file \"snapstack.prom\" must be an absolute path, e.g. /var/lib/prometheus/node-exporter/snapstack.prom"))
        #expect(failure("metrics:\n  file: /tmp/snapstack.txt\n") == PolicyError(
            file: "test.conf", line: 2, column: 9,
            reason: "the metrics file \"/tmp/snapstack.txt\" must be named *.prom: node_exporter's textfile collector reads no other file"))
        #expect(failure("metrics:\n  file: /a.prom\n  interval: soon\n") == PolicyError(
            file: "test.conf", line: 3, column: 13, reason: "interval \"soon\" is not a duration (write e.g. 500ms, 5s, 1m)"))
        #expect(failure("metrics:\n  path: /a.prom\n") == PolicyError(
            file: "test.conf", line: 2, column: 3, reason: "unknown key \"path\" in metrics (known: file, interval)"))
        #expect(failure("metrics:\n  file:\n") != nil)
        #expect(failure("metrics: /a.prom\n")?.reason == "metrics must be a mapping of keys to values")
    }

    @Test func shippedExampleParses() throws {
        // The example the package installs must stay valid.
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("systemd/snapstack.conf.example")
        let policy = try Policy(parsing: try String(contentsOf: url, encoding: .utf8), file: url.path)
        #expect(policy.rules.isEmpty, "the shipped example must protect nothing until an admin says so")
        #expect(policy.metrics.file == nil, "metrics are off until an admin names a file")
    }
}

@Suite struct ErrorTests {
    @Test func yamlSyntaxNamesTheLine() throws {
        let error = try #require(failure("rules:\n  - match: {ID_SERIAL: x\n    protect: {}\n"))
        #expect(error.line >= 2)
        #expect(error.reason.hasPrefix("not valid YAML"))
        #expect(error.description.hasPrefix("test.conf:\(error.line):"))
        #expect(!error.description.contains("\n"))
    }

    @Test func unknownKeysNameTheirLine() throws {
        #expect(failure("rule:\n  - {}\n") == PolicyError(file: "test.conf", line: 1, column: 1,
                                                      reason: "unknown key \"rule\" in the file (known: version, rules, stores, metrics)"))
        let inRule = try #require(failure("rules:\n  - match: {DEVTYPE: disk}\n    protect: {}\n    exclud: true\n"))
        #expect(inRule.line == 4 && inRule.column == 5)
        #expect(inRule.reason.contains("unknown key \"exclud\""))
        let inMatch = try #require(failure("rules:\n  - match:\n      id_serial: x\n    exclude: true\n"))
        #expect(inMatch.line == 3 && inMatch.reason.contains("capitals"))
        let inProtect = try #require(failure("rules:\n  - protect:\n      cbt: 64K\n"))
        #expect(inProtect.line == 3 && inProtect.reason.contains("unknown key \"cbt\" in protect"))
    }

    @Test func badValuesNameTheirLine() throws {
        let glob = try #require(failure("rules:\n  - match:\n      ID_PATH: \"pci-[0-9\"\n    exclude: true\n"))
        #expect(glob.line == 3 && glob.column == 16)
        #expect(glob.reason.contains("[ is not closed"))
        let size = try #require(failure("rules:\n  - match: {min-size: 12Q}\n    exclude: true\n"))
        #expect(size.line == 2 && size.reason.contains("is not a size"))
        let block = try #require(failure("rules:\n  - protect: {cbt-block: 6K}\n"))
        #expect(block.line == 2 && block.reason.contains("multiple of 4K"))
        let both = try #require(failure("rules:\n  - protect: {cbt-block: 64K, no-cbt: true}\n"))
        #expect(both.reason.contains("exclude each other"))
        let threshold = try #require(failure("stores:\n  threshold: 120%\n"))
        #expect(threshold.line == 2)
        #expect(failure("version: 2\n")?.reason.contains("version must be 1") == true)
        #expect(failure("rules:\n  - match: {DEVTYPE: disk}\n    protect: {}\n    exclude: true\n")?.reason
                    == "a rule either protects or excludes, not both")
        #expect(failure("rules:\n  - match: {DEVTYPE: disk}\n")?.reason == "the rule says neither protect: nor exclude: true")
        #expect(failure("rules:\n  - match: {min-size: 2G, max-size: 1G}\n    exclude: true\n")?.reason.contains("min-size is larger") == true)
        #expect(failure("rules: {a: b}\n")?.reason.contains("must be a list") == true)
    }

    @Test func templateErrorsPointAtTheCharacter() throws {
        let error = try #require(failure("rules:\n  - protect:\n      name: disk-${ID_SERIAL\n"))
        #expect(error.line == 3)
        #expect(error.reason.contains("not closed"))
        let space = try #require(failure("rules:\n  - protect:\n      name: \"my disk\"\n"))
        #expect(space.line == 3 && space.column == 16)
        #expect(space.reason.contains("\" \" is not allowed"))
    }

    @Test func duplicateKeys() throws {
        let error = try #require(failure("rules:\n  - match: {DEVTYPE: disk}\n    match: {DEVTYPE: partition}\n    exclude: true\n"))
        #expect(error.reason.contains("given twice"))
        #expect(error.line > 0)
    }

    @Test func unreadableFile() {
        do {
            _ = try Policy.load(path: "/nonexistent/snapstack.conf")
            Issue.record("loaded a missing file")
        } catch {
            #expect(error.description.hasPrefix("/nonexistent/snapstack.conf: cannot read it"))
        }
    }
}

@Suite struct MatchingTests {
    @Test func firstMatchWins() throws {
        let policy = try parse("""
            rules:
              - name: keep off
                match: {ID_SERIAL: "backup-00*"}
                exclude: true
              - match: {ID_SERIAL: "backup-*"}
                protect: {}
            """)
        guard case .exclude(let rule) = policy.decision(properties: partition, size: .gibibytes(1)) else {
            Issue.record("the exclude rule did not win"); return
        }
        #expect(rule.description == "rule 1 \"keep off\" (line 2)")
        var other = partition
        other["ID_SERIAL"] = "backup-1234"
        guard case .protect(let name, let block, let second) = policy.decision(properties: other, size: .gibibytes(1)) else {
            Issue.record("the protect rule did not match"); return
        }
        #expect(name == "backup-1234-part1")
        #expect(block == ProtectAction.automaticCBTBlock)
        #expect(second.index == 2)
    }

    @Test func everyKeyMustHoldAndAbsentIsEmpty() throws {
        let policy = try parse("""
            rules:
              - match: {ID_FS_TYPE: "", DEVTYPE: disk}
                protect: {name: "blank-${KERNEL}"}
              - match: {ID_FS_LABEL: "?*"}
                protect: {}
            """)
        #expect(policy.decision(properties: partition, size: .gibibytes(1)) == .noMatch)
        let blank: [String: String] = ["KERNEL": "vdc", "DEVTYPE": "disk"]
        guard case .protect(let name, _, _) = policy.decision(properties: blank, size: .gibibytes(1)) else {
            Issue.record("no match"); return
        }
        #expect(name == "blank-vdc")
    }

    @Test func sizeBounds() throws {
        let policy = try parse("rules:\n  - match: {min-size: 1G, max-size: 2G}\n    protect: {}\n")
        #expect(policy.decision(properties: partition, size: .mebibytes(1023)) == .noMatch)
        #expect(policy.decision(properties: partition, size: .gibibytes(2)) != .noMatch)
        #expect(policy.decision(properties: partition, size: Bytes(2 << 30 + 512)) == .noMatch)
    }

    @Test func globsCrossSlashesAndColons() throws {
        let glob = try Glob("pci-0000:00:*")
        #expect(glob.matches("pci-0000:00:04.0"))
        #expect(try Glob("/dev/vd*").matches("/dev/vdb"))
        #expect(!(try Glob("vd[!a]")).matches("vda"))
        #expect(try Glob("vd[!a]").matches("vdb"))
        #expect(try Glob("[]x]").matches("]"))
        #expect(throws: GlobError.self) { try Glob("a\\") }
    }
}

@Suite struct TemplateTests {
    @Test func expansions() throws {
        let template = try NameTemplate(ProtectAction.defaultNameTemplate)
        #expect(template.expand(partition) == "backup-0042-part1")
        #expect(template.expand(["KERNEL": "vdc"]) == "vdc")
        #expect(template.expand(["KERNEL": "vdc", "ID_SERIAL": ""]) == "vdc")
        #expect(try NameTemplate("x-${A:+a-${B}}").expand(["A": "1", "B": "2"]) == "x-a-2")
        #expect(try NameTemplate("x-${A:+a-${B}}").expand(["B": "2"]) == "x-")
    }

    @Test func valuesAreMadeValidNames() throws {
        #expect(try NameTemplate("${ID_MODEL}").expand(["ID_MODEL": "QEMU HARDDISK/€"]) == "QEMU_HARDDISK__")
        let long = String(repeating: "a", count: 100)
        #expect(try NameTemplate("${X}").expand(["X": long]).count == NameTemplate.maximumLength)
        #expect(try NameTemplate("${X}").expand([:]) == "")
    }

    @Test func syntaxErrors() {
        #expect(throws: TemplateError(reason: "a ${ is not closed by }", column: 3)) { try NameTemplate("a-${X") }
        #expect(throws: TemplateError.self) { try NameTemplate("a-${}") }
        #expect(throws: TemplateError.self) { try NameTemplate("a-${X:=y}") }
        #expect(throws: TemplateError.self) { try NameTemplate("a-$X") }
        #expect(throws: TemplateError.self) { try NameTemplate("a/b") }
        #expect(throws: TemplateError.self) { try NameTemplate("${X:-${Y}") }
    }
}
