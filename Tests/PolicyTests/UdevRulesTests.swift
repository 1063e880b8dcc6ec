import BlockIO
import Testing
@testable import Policy

private func compile(_ text: String) throws -> [String] {
    try Policy(parsing: text, file: "test.conf").udevRules(releasedDirectory: "/run/snapstack/released")
        .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
}

/// The rule lines (not comments, not the fixed head).
private func ruleLines(_ lines: [String]) -> [String] {
    lines.filter { $0.contains("GOTO=\"snapstack_policy_end\"") && !$0.hasPrefix("SUBSYSTEM") && !$0.hasPrefix("ACTION")
        && !$0.hasPrefix("KERNEL==\"dm-*\"") && !$0.hasPrefix("TEST") && !$0.hasPrefix("ENV{SYNTH_UUID}") }
}

@Suite struct UdevRulesTests {
    @Test func headOnlyTagsRealAddEventsOfDevicesNotReleased() throws {
        let lines = try compile("rules:\n  - match: {ID_SERIAL: \"x*\"}\n    protect: {}\n")
        // Before any rule: removes, dm devices, released devices end; later events keep the tag
        // of the first; a synthetic add (udevadm trigger, coldplug) is never tagged.
        let head = ["SUBSYSTEM!=\"block\", GOTO=\"snapstack_policy_end\"",
                    "ACTION==\"remove\", GOTO=\"snapstack_policy_end\"",
                    "KERNEL==\"dm-*\", GOTO=\"snapstack_policy_end\"",
                    "TEST==\"/run/snapstack/released/$major:$minor\", GOTO=\"snapstack_policy_end\"",
                    "ACTION!=\"add\", IMPORT{db}=\"SNAPSTACK_POLICY\", GOTO=\"snapstack_policy_end\"",
                    "ENV{SYNTH_UUID}==\"?*\", GOTO=\"snapstack_policy_end\""]
        let start = try #require(lines.firstIndex(of: head[0]))
        #expect(Array(lines[start..<start + head.count]) == head)
        #expect(lines.last(where: { !$0.isEmpty }) == "LABEL=\"snapstack_policy_end\"")
    }

    @Test func rulesKeepTheirOrderAndEveryPattern() throws {
        let lines = try compile("""
            rules:
              - name: never the boot disk
                match: {ID_PATH: "pci-0000:00:1f.2-ata-1*"}
                exclude: true
              - name: shelf
                match:
                  ID_SERIAL: ["WDC_WD80*", "ST8000*"]
                  DEVTYPE: partition
                  KERNEL: "sd?[0-9]"
                protect: {}
            """)
        #expect(ruleLines(lines) == [
            "ENV{ID_PATH}==\"pci-0000:00:1f.2-ata-1*\", GOTO=\"snapstack_policy_end\"",
            "ENV{ID_SERIAL}==\"WDC_WD80*|ST8000*\", ENV{DEVTYPE}==\"partition\", KERNEL==\"sd?[0-9]\", ENV{SNAPSTACK_POLICY}=\"2\", GOTO=\"snapstack_policy_end\"",
        ])
        #expect(lines.contains("# rule 1 \"never the boot disk\" (line 2): exclude"))
    }

    /// Sizes cannot be compared in udev: a protect rule hides regardless of them (the daemon
    /// releases what it then does not protect), an exclude rule with one is left out, so that
    /// what it excludes falls to the later rules: hidden more, never less.
    @Test func sizeBoundsWidenNeverNarrow() throws {
        let lines = try compile("""
            rules:
              - match: {ID_BUS: usb, max-size: 1G}
                exclude: true
              - match: {ID_BUS: usb, min-size: 100G}
                protect: {}
            """)
        #expect(ruleLines(lines) == ["ENV{ID_BUS}==\"usb\", ENV{SNAPSTACK_POLICY}=\"2\", GOTO=\"snapstack_policy_end\""])
        #expect(lines.contains { $0.hasPrefix("# rule 1 (line 2): exclude, left out") })
        #expect(lines.contains("# rule 2 (line 4): protect (its size bounds are not tested here)"))
    }

    /// A pattern udev would read otherwise (its "|" alternatives, "$" substitutions, quotes,
    /// an empty pattern among others) is dropped from a protect rule, and leaves an exclude
    /// rule out; the rule's label cannot break a comment line.
    @Test func patternsUdevReadsOtherwiseWiden() throws {
        let lines = try compile("""
            rules:
              - name: "two\\nlines"
                match: {ID_MODEL: "a|b"}
                exclude: true
              - match: {ID_SERIAL: "x$y", DEVTYPE: disk}
                protect: {}
              - match: {ID_FS_TYPE: ["", ext4], ID_VENDOR: "q\\"t"}
                protect: {}
              - match: {ID_FS_TYPE: ""}
                protect: {}
            """)
        #expect(ruleLines(lines) == [
            "ENV{DEVTYPE}==\"disk\", ENV{SNAPSTACK_POLICY}=\"2\", GOTO=\"snapstack_policy_end\"",
            "ENV{SNAPSTACK_POLICY}=\"3\", GOTO=\"snapstack_policy_end\"",
            "ENV{ID_FS_TYPE}==\"\", ENV{SNAPSTACK_POLICY}=\"4\", GOTO=\"snapstack_policy_end\"",
        ])
        #expect(lines.contains { $0.hasPrefix("# rule 1 \"two?lines\" (line 2): exclude, left out") })
        #expect(!lines.contains { $0.contains("x$y") || $0.contains("a|b") })
    }

    /// What the daemon decides on is what udev said before snapstack's rules hid the device.
    @Test func propertiesBeforeHidingUndoOnlyOurOwnChanges() {
        let hidden = ["ID_FS_TYPE": "snapstack_member", "SNAPSTACK_ID_FS_TYPE": "LVM2_member", "SNAPSTACK_MEMBER": "1",
                      "SNAPSTACK_POLICY": "2", "SYSTEMD_READY": "0", "UDISKS_IGNORE": "1", "ID_SERIAL": "s"]
        #expect(Policy.propertiesBeforeHiding(hidden) == ["ID_FS_TYPE": "LVM2_member", "ID_SERIAL": "s"])
        // A device without a filesystem: none comes back.
        #expect(Policy.propertiesBeforeHiding(["ID_FS_TYPE": "snapstack_member", "SNAPSTACK_POLICY": "1"]) == ["ID_FS_TYPE": ""])
        // Not hidden by snapstack: another rule's SYSTEMD_READY=0 stays.
        let other = ["SYSTEMD_READY": "0", "ID_FS_TYPE": "ext4"]
        #expect(Policy.propertiesBeforeHiding(other) == other)
    }
}
