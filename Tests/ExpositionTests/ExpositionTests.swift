import Testing
@testable import Exposition

@Suite struct RenderTests {
    @Test func smallModelExactText() throws {
        let text = try Exposition.render([
            MetricFamily("snapstack_store_overflows_total", .counter, help: "Snapshots invalidated.", samples: [Sample(3)]),
            MetricFamily("snapstack_device_size_bytes", .gauge, help: "Size of the device.", samples: [
                Sample([Label("name", "data")], 1_073_741_824),
                Sample([Label("name", "backup")], 512),
            ]),
            MetricFamily("snapstack_snapshot_freeze_seconds", .gauge, help: "Freeze window.", samples: [
                Sample([Label("name", "data-1")], 0.0125),
            ]),
        ])
        #expect(text == """
            # HELP snapstack_device_size_bytes Size of the device.
            # TYPE snapstack_device_size_bytes gauge
            snapstack_device_size_bytes{name="backup"} 512
            snapstack_device_size_bytes{name="data"} 1073741824
            # HELP snapstack_snapshot_freeze_seconds Freeze window.
            # TYPE snapstack_snapshot_freeze_seconds gauge
            snapstack_snapshot_freeze_seconds{name="data-1"} 0.0125
            # HELP snapstack_store_overflows_total Snapshots invalidated.
            # TYPE snapstack_store_overflows_total counter
            snapstack_store_overflows_total 3

            """)
    }

    @Test func labelValuesAreEscaped() throws {
        let text = try Exposition.render([
            MetricFamily("m", .gauge, help: "h", samples: [
                Sample([Label("name", #"a\b"c"# + "\nd"), Label("path", "/dev/mapper/snapstack-x#+-.:=@_y")], 1),
            ]),
        ])
        #expect(text.split(separator: "\n").last == #"m{name="a\\b\"c\nd",path="/dev/mapper/snapstack-x#+-.:=@_y"} 1"#)
    }

    @Test func helpEscapesBackslashAndNewlineOnly() throws {
        let text = try Exposition.render([MetricFamily("m", .untyped, help: "a \"quoted\" \\ path\nsecond", samples: [])])
        #expect(text == "# HELP m a \"quoted\" \\\\ path\\nsecond\n# TYPE m untyped\n")
    }

    @Test func orderDoesNotDependOnInput() throws {
        let a = MetricFamily("b_metric", .gauge, help: "b", samples: [Sample([Label("name", "y")], 2), Sample([Label("name", "x")], 1)])
        let b = MetricFamily("a_metric", .counter, help: "a", samples: [Sample(5)])
        var reversed = a
        reversed.samples.reverse()
        #expect(try Exposition.render([a, b]) == Exposition.render([b, reversed]))
        let lines = try Exposition.render([a, b]).split(separator: "\n")
        #expect(lines.map(String.init) == [
            "# HELP a_metric a", "# TYPE a_metric counter", "a_metric 5",
            "# HELP b_metric b", "# TYPE b_metric gauge", #"b_metric{name="x"} 1"#, #"b_metric{name="y"} 2"#,
        ])
    }

    @Test func samplesSortByLabelValuesInOrder() throws {
        let text = try Exposition.render([MetricFamily("s", .gauge, help: "h", samples: [
            Sample([Label("name", "b"), Label("state", "active")], 1),
            Sample([Label("name", "a"), Label("state", "inactive")], 0),
            Sample([Label("name", "a"), Label("state", "active")], 1),
        ])])
        #expect(text.split(separator: "\n").dropFirst(2).map(String.init) == [
            #"s{name="a",state="active"} 1"#, #"s{name="a",state="inactive"} 0"#, #"s{name="b",state="active"} 1"#,
        ])
    }

    @Test func values() {
        #expect(Exposition.formatValue(0) == "0")
        #expect(Exposition.formatValue(-0.0) == "0")
        #expect(Exposition.formatValue(1_764_686_400) == "1764686400")
        #expect(Exposition.formatValue(9_007_199_254_740_991) == "9007199254740991")
        #expect(Exposition.formatValue(0.5) == "0.5")
        #expect(Exposition.formatValue(1_764_686_400.25) == "1764686400.25")
        #expect(Exposition.formatValue(.nan) == "NaN")
        #expect(Exposition.formatValue(.infinity) == "+Inf")
        #expect(Exposition.formatValue(-.infinity) == "-Inf")
        // The shortest text that reads back as the same double.
        for value in [0.1, 1e-7, 123.456, 2.5e20] {
            #expect(Double(Exposition.formatValue(value)) == value)
        }
    }

    @Test func typesAreWrittenAsTheFormatNamesThem() throws {
        for (type, word) in [(MetricType.counter, "counter"), (.gauge, "gauge"), (.untyped, "untyped")] {
            #expect(try Exposition.render([MetricFamily("x", type, help: "h")]).contains("# TYPE x \(word)\n"))
        }
    }

    @Test func badModelsAreRefused() {
        #expect(throws: ExpositionError.invalidMetricName("0abc")) { try Exposition.render([MetricFamily("0abc", .gauge, help: "")]) }
        #expect(throws: ExpositionError.invalidMetricName("a-b")) { try Exposition.render([MetricFamily("a-b", .gauge, help: "")]) }
        #expect(throws: ExpositionError.invalidMetricName("")) { try Exposition.render([MetricFamily("", .gauge, help: "")]) }
        #expect(throws: ExpositionError.duplicateFamily("a")) {
            try Exposition.render([MetricFamily("a", .gauge, help: ""), MetricFamily("a", .counter, help: "")])
        }
        #expect(throws: ExpositionError.invalidLabelName(family: "a", label: "__name")) {
            try Exposition.render([MetricFamily("a", .gauge, help: "", samples: [Sample([Label("__name", "x")], 1)])])
        }
        #expect(throws: ExpositionError.invalidLabelName(family: "a", label: "a:b")) {
            try Exposition.render([MetricFamily("a", .gauge, help: "", samples: [Sample([Label("a:b", "x")], 1)])])
        }
        #expect(throws: ExpositionError.duplicateLabel(family: "a", label: "n")) {
            try Exposition.render([MetricFamily("a", .gauge, help: "", samples: [Sample([Label("n", "x"), Label("n", "y")], 1)])])
        }
        #expect(throws: ExpositionError.duplicateSample(family: "a", labels: #"m="2",n="1""#)) {
            try Exposition.render([MetricFamily("a", .gauge, help: "", samples: [
                Sample([Label("n", "1"), Label("m", "2")], 1), Sample([Label("m", "2"), Label("n", "1")], 2),
            ])])
        }
    }

    @Test func names() {
        #expect(Exposition.isMetricName("snapstack_device_size_bytes"))
        #expect(Exposition.isMetricName("job:rate:5m"))
        #expect(Exposition.isMetricName("_x"))
        #expect(!Exposition.isMetricName("1x"))
        #expect(!Exposition.isMetricName("x y"))
        #expect(!Exposition.isMetricName("é"))
        #expect(Exposition.isLabelName("name"))
        #expect(!Exposition.isLabelName("na-me"))
    }
}
