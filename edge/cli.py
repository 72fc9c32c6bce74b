"""`edge-inspect`: run the inspection daemon, watch its results, evaluate models, check configs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from edge.arguments import finite_float, fraction, integer_in, positive_float, seed
from edge.config import AppConfig, ConfigError, RoiConfig, load_config, validate_config
from edge.log import configure_logging

if TYPE_CHECKING:
    from edge.inference.package import ModelPackage

log = structlog.get_logger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"edge-inspect: {error}", file=sys.stderr)
        return EXIT_USAGE


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-inspect", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the inspection daemon",
                              description="Inspect every frame of a source and publish verdicts over ZeroMQ.")
    run.add_argument("--config", type=Path, help="YAML configuration file (see configs/)")
    run.add_argument("--model", type=Path, help="model package folder; overrides model.path")
    run.add_argument("--source", help="camera index, stream URL, video file, image folder or 'synthetic'; overrides source")
    run.add_argument("--endpoint", help="ZeroMQ PUB endpoint to bind (default: tcp://127.0.0.1:5556)")
    run.add_argument("--rate", type=positive_float,
                     help="replay rate in frames per second for files, folders and 'synthetic' "
                          "(default: as fast as the pipeline inspects)")
    run.add_argument("--max-parts", type=integer_in(1), help="stop after this many parts (default: no limit)")
    run.add_argument("--line", help="line name in topics and messages")
    run.add_argument("--station", help="station name in topics and messages")
    run.set_defaults(handler=_run)

    watch = commands.add_parser("watch", help="print results published by a running daemon",
                                description="Subscribe to a daemon and print one line per result.")
    watch.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="daemon endpoint (default: tcp://127.0.0.1:5556)")
    watch.add_argument("--save", type=Path, help="folder for heat-map PNGs, one per result")
    watch.add_argument("--images", type=_existing_folder,
                       help="folder that a replaying daemon reads; saved maps are then drawn over its images")
    watch.add_argument("--count", type=integer_in(1), help="exit after this many results (default: no limit)")
    watch.add_argument("--timeout-s", type=positive_float, help="exit after this many seconds (default: no limit)")
    watch.add_argument("--json", action="store_true", help="print the summary as JSON at exit")
    watch.set_defaults(handler=_watch)

    evaluate = commands.add_parser(
        "eval", help="evaluate a model package on an MVTec-AD-layout folder or on class folders",
        description="Score test/good and test/<defect> images exactly as the daemon does. With --good, score "
                    "class folders instead: the named folder holds good parts, every other folder defective parts.")
    evaluate.add_argument("--model", type=Path, required=True, help="model package folder")
    evaluate.add_argument("--data", type=Path, required=True,
                          help="folder with test/ and ground_truth/, or with one folder per class when --good is given")
    evaluate.add_argument("--good", metavar="NAME",
                          help="name of the class folder of good parts; every other folder in --data is defective")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for metrics.json, roc.png and overlays")
    evaluate.add_argument("--overlays", type=integer_in(0, 100000),
                          help="with --good: overlay images written per class (default: 4)")
    evaluate.add_argument("--boxes", type=Path, metavar="FILE",
                          help="with --good: JSON file of defect boxes per image, in that image's pixels; adds the pointing "
                               "game and the map mass in the boxes to the metrics")
    evaluate.add_argument("--image-threshold", type=finite_float, help="override the package's image threshold")
    evaluate.add_argument("--pixel-threshold", type=finite_float, help="override the package's pixel threshold")
    evaluate.add_argument("--threads", type=integer_in(1, 256), default=2,
                          help="ONNX Runtime intra-op threads (default: 2)")
    evaluate.set_defaults(handler=_eval)

    check = commands.add_parser("check-config", help="validate a configuration file and its model package")
    check.add_argument("file", type=Path, help="YAML configuration file to validate")
    check.set_defaults(handler=_check_config)

    synth = commands.add_parser("synth", help="write rendered example parts in the MVTec AD layout",
                                description="Render good and defective parts for trials without a camera.")
    synth.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    synth.add_argument("--good-train", type=integer_in(0, 100000), default=60, help="good parts for train/good (default: 60)")
    synth.add_argument("--good-test", type=integer_in(0, 100000), default=10, help="good parts for test/good (default: 10)")
    synth.add_argument("--defective-per-kind", type=integer_in(0, 100000), default=5, help="defective test parts per defect kind (default: 5)")
    synth.add_argument("--size", type=integer_in(64, 4096), default=256, help="image size in pixels, 64 to 4096 (default: 256)")
    synth.add_argument("--seed", type=seed, default=0, help="seed of the rendering; the same seed writes the same images")
    synth.set_defaults(handler=_synth)

    demo = commands.add_parser(
        "demo", help="run a whole simulated line: camera, light controller, PLC with encoder, reject output",
        description="Run the daemon against a simulated light controller and PLC on pseudo-terminals; the PLC "
                    "announces parts, the daemon inspects them and pulses the reject output at the ejector.")
    demo.add_argument("--parts", type=integer_in(1, 1000000), default=100, help="parts to run (default: 100)")
    demo.add_argument("--rate", type=positive_float, default=20.0, help="parts per second on the conveyor, at most 100 (default: 20)")
    demo.add_argument("--model", type=Path, help="model package folder (default: the built-in reference model)")
    demo.add_argument("--plc", choices=("modbus_rtu", "ascii"), default="modbus_rtu", help="PLC protocol (default: modbus_rtu)")
    demo.add_argument("--light", choices=("gardasoft", "ccs"), default="gardasoft", help="light controller protocol (default: gardasoft)")
    demo.add_argument("--defect-rate", type=fraction, default=0.3, help="share of parts rendered with a defect (default: 0.3)")
    demo.add_argument("--light-fault-at", type=integer_in(1), help="part number at which the light controller loses power")
    demo.add_argument("--light-fault-parts", type=integer_in(1), help="parts the light stays off for, with --light-fault-at (default: 10)")
    demo.add_argument("--endpoint", help="ZeroMQ endpoint for the results, so `watch` can follow (default: an ipc socket)")
    demo.add_argument("--seed", type=seed, default=0, help="seed of the rendered parts")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(handler=_demo)
    return parser


# Config keys that `run` options set, so errors name the option the user typed.
RUN_OPTION_KEYS = {
    "model.path": "--model",
    "source.rate_fps": "--rate",
    "publish.endpoint": "--endpoint",
    "pipeline.max_parts": "--max-parts",
    "station.line": "--line",
    "station.station": "--station",
}
SOURCE_LOCATION_KEYS = ("kind", "device", "uri", "path")


def build_run_config(args: argparse.Namespace) -> AppConfig:
    """Merge the config file (if any) with the command-line overrides and validate the result.

    `--source` replaces only where frames come from; the file's other source settings
    (timeouts, loop, rate) stay unless another option overrides them.
    """
    from edge.acquisition.base import SourceError
    from edge.acquisition.factory import parse_source_argument

    data: dict = {}
    source_name = "<command line>"
    if args.config is not None:
        data = load_config(args.config).model_dump(mode="json", exclude_none=True)
        source_name = f"{args.config} with command-line options"
    elif args.model is None or args.source is None:
        raise ConfigError("run needs --config FILE, or both --model MODEL_DIR and --source PATH_OR_URL_OR_INDEX")

    if args.model is not None:
        data.setdefault("model", {})["path"] = str(args.model)
    if args.source is not None:
        try:
            parsed = parse_source_argument(args.source, rate_fps=args.rate)
        except SourceError as error:
            raise ConfigError(str(error)) from error
        file_settings = {key: value for key, value in data.get("source", {}).items() if key not in SOURCE_LOCATION_KEYS}
        data["source"] = {**file_settings, **parsed.model_dump(mode="json", exclude_unset=True, exclude_none=True)}
    elif args.rate is not None:
        data.setdefault("source", {})["rate_fps"] = args.rate
    if args.endpoint is not None:
        data.setdefault("publish", {})["endpoint"] = args.endpoint
    if args.max_parts is not None:
        data.setdefault("pipeline", {})["max_parts"] = args.max_parts
    for key in ("line", "station"):
        if getattr(args, key) is not None:
            data.setdefault("station", {})[key] = getattr(args, key)
    return validate_config(data, source_name=source_name, option_names=RUN_OPTION_KEYS)


def _run(args: argparse.Namespace) -> int:
    from edge.acquisition.base import SourceError
    from edge.acquisition.factory import create_source
    from edge.lineio.base import LineIOError
    from edge.publish.publisher import PublishError
    from edge.pipeline import DaemonError, build_pipeline

    config = build_run_config(args)
    configure_logging(config.logging.level, config.logging.format)

    # Handlers go in before the model loads, so a stop during start-up still ends cleanly.
    # They only record the signal: logging from a signal handler can deadlock on the logger's lock.
    received: list[str] = []
    pipeline = None

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        if pipeline is not None:
            pipeline.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        pipeline = build_pipeline(config, create_source(config.source))
    except (DaemonError, SourceError) as error:
        print(f"edge-inspect: {error}", file=sys.stderr)
        return EXIT_USAGE
    if received:
        pipeline.request_stop()

    try:
        summary = pipeline.run()
    except (SourceError, PublishError, LineIOError) as error:
        print(f"edge-inspect: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if received:
        log.info("stopped by signal", signal=received[0])
    print(json.dumps(summary, indent=2, default=str))
    if pipeline.failure is not None:
        print(f"edge-inspect: {pipeline.failure}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _watch(args: argparse.Namespace) -> int:
    from edge.watch import watch

    configure_logging("warning", "auto")
    try:
        summary = watch(args.endpoint, save_dir=args.save, max_results=args.count, timeout_s=args.timeout_s,
                        images_dir=args.images)
    except (ValueError, OSError) as error:
        print(f"edge-inspect watch: {error}", file=sys.stderr)
        return EXIT_USAGE
    verdicts = ", ".join(f"{verdict} {count}" for verdict, count in sorted(summary["by_verdict"].items()))
    print(f"# {summary['results']} results ({verdicts or 'none'}), {summary['gaps']} missing part ids, "
          f"{summary['statuses']} status messages, stopped by {summary['stopped_by']}")
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from edge.config import InferenceConfig
    from edge.evaluation.classification_runner import evaluate_classes
    from edge.evaluation.runner import evaluate
    from edge.inference.package import PackageError

    configure_logging("warning", "auto")
    inspector_kwargs = {
        "inference": InferenceConfig(intra_op_num_threads=args.threads),
        "image_threshold": args.image_threshold,
        "pixel_threshold": args.pixel_threshold,
    }
    if args.good is None and args.overlays is not None:
        print("edge-inspect eval: --overlays applies to class folders; add --good NAME or remove it", file=sys.stderr)
        return EXIT_USAGE
    if args.good is None and args.boxes is not None:
        print("edge-inspect eval: --boxes applies to class folders only; add --good NAME or remove it", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.good is not None:
            metrics = evaluate_classes(args.model, args.data, args.out, args.good, inspector_kwargs,
                                       overlays_per_class=4 if args.overlays is None else args.overlays,
                                       boxes_path=args.boxes)
        else:
            metrics = evaluate(args.model, args.data, args.out, inspector_kwargs=inspector_kwargs)
    except (PackageError, ValueError, OSError) as error:
        print(f"edge-inspect eval: {error}", file=sys.stderr)
        return EXIT_USAGE

    summary = {key: value for key, value in metrics.items() if key != "per_class"}
    if "localisation" in summary:
        summary["localisation"] = {key: value for key, value in summary["localisation"].items() if key != "per_image"}
    print(json.dumps(summary, indent=2, default=str))
    if "localisation" in metrics:
        # stderr keeps stdout a single JSON document for scripts.
        print(_localisation_headline(metrics["localisation"]), file=sys.stderr)
    return 0


def _localisation_headline(localisation: dict) -> str:
    """Return the pointing-game rate and mean map mass in the boxes, of all boxed images and of the failed ones."""

    def figures(block: dict) -> str:
        if not block["images_with_boxes"]:
            return "no images"
        return (f"pointing game {block['pointing_game_hits']}/{block['images_with_boxes']} "
                f"({block['pointing_game_rate']:.3f}), mean mass in boxes {block['mean_mass_in_boxes']:.3f}")

    return f"localisation: {figures(localisation)}; on failed images: {figures(localisation['detected'])}"


def _check_config(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from edge.inference.package import PackageError, load_package
    from edge.lineio.line_io import LineIO

    config = load_config(args.file)
    problems = []
    try:
        package = load_package(config.model.path)
        problems += _window_problems(package, config.preprocess.roi)
    except PackageError as error:
        problems.append(f"model.path: {error}")
    if "CUDAExecutionProvider" in config.inference.providers and "CUDAExecutionProvider" not in ort.get_available_providers():
        problems.append("inference.providers: CUDAExecutionProvider is not available in this onnxruntime build; "
                        "install onnxruntime-gpu or use CPUExecutionProvider")
    if config.source.path is not None and not config.source.path.exists():
        problems.append(f"source.path: {config.source.path} not found; check the path")
    problems += _line_io_problems(config)
    if problems:
        for problem in problems:
            print(f"edge-inspect: {args.file}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.file}: valid; model {package.name} version {package.version} ({package.kind}), "
          f"source {config.source.kind}, publishing on {config.publish.endpoint}")
    line_io = config.line_io
    if LineIO.configured(line_io):
        reject = line_io.reject
        print(f"line I/O: light {line_io.light.protocol + ' recipe ' + line_io.light.recipe if line_io.light else 'none'}, "
              f"PLC {line_io.plc.protocol if line_io.plc else 'none'}, "
              f"reject {reject.output + ' by ' + reject.timing if reject else 'none'}, trigger {line_io.trigger.mode}")
    return 0


def _window_problems(package: ModelPackage, roi: RoiConfig | None) -> list[str]:
    """Return a problem when the ROI is smaller than a windowed package's window, which would reject every part."""
    from edge.preprocess.windows import WINDOWS_SECTION, parse_windows_section

    try:
        spec = parse_windows_section(package.description.get(WINDOWS_SECTION))
    except ValueError:
        # The daemon names an invalid section when it loads the model.
        return []
    if spec is None or roi is None or (roi.width >= spec.tile_width_px and roi.height >= spec.tile_height_px):
        return []
    return [f"preprocess.roi: {roi.width}x{roi.height} px is smaller than the model's {spec.tile_width_px}x"
            f"{spec.tile_height_px} px window, so every part would be rejected; enlarge the ROI or use a model "
            "with smaller windows"]


def _line_io_problems(config: AppConfig) -> list[str]:
    """Serial ports that are not there, and device settings the line I/O cannot use."""
    from edge.lineio.base import LineIOError
    from edge.lineio.line_io import LineIO
    from edge.lineio.serial_link import matching_ports

    problems = []
    line_io = config.line_io
    used_by: dict[str, str] = {}
    for key, device in (("light", line_io.light), ("plc", line_io.plc), ("relay", line_io.relay)):
        if device is None:
            continue
        matches = matching_ports(device.serial.port)
        if not matches:
            problems.append(f"line_io.{key}.serial.port: no device at {device.serial.port}; plug it in, or list the "
                            "stable names with `ls -l /dev/serial/by-id/`")
        elif len(matches) > 1:
            problems.append(f"line_io.{key}.serial.port: {device.serial.port} matches {len(matches)} devices "
                            f"({', '.join(matches)}); make the pattern name exactly one")
        for path in matches:
            real_path = os.path.realpath(path)
            if real_path in used_by:
                problems.append(f"line_io.{key}.serial.port: {path} is also the port of line_io.{used_by[real_path]}; "
                                "each device needs its own port")
            used_by.setdefault(real_path, key)
    try:
        LineIO(line_io)
    except (LineIOError, ValueError) as error:
        problems.append(f"line_io: {error}")
    return problems


def _synth(args: argparse.Namespace) -> int:
    from edge.acquisition.synthetic import write_synthetic_dataset

    configure_logging("warning", "auto")
    try:
        out = write_synthetic_dataset(
            args.out,
            good_train=args.good_train,
            good_test=args.good_test,
            defective_per_kind=args.defective_per_kind,
            size_px=args.size,
            seed=args.seed,
        )
    except (ValueError, OSError) as error:
        print(f"edge-inspect synth: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote rendered parts to {out} (train/good, test/<kind>, ground_truth/<kind>)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import threading

    from edge.acquisition.base import SourceError
    from edge.demo.simulated_line import DemoError, DemoOptions, run_demo
    from edge.lineio.base import LineIOError
    from edge.pipeline import DaemonError

    configure_logging("warning", "auto")
    if args.light_fault_parts is not None and args.light_fault_at is None:
        print("edge-inspect demo: --light-fault-parts needs --light-fault-at, the part at which the light fails",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        options = DemoOptions(
            parts=args.parts, rate_pps=args.rate, model=args.model, plc_protocol=args.plc, light_protocol=args.light,
            defect_rate=args.defect_rate, seed=args.seed, endpoint=args.endpoint,
            light_fault_at=args.light_fault_at, light_fault_parts=args.light_fault_parts or 10,
        )
    except ValueError as error:
        print(f"edge-inspect demo: {error}", file=sys.stderr)
        return EXIT_USAGE

    # A signal ends the run early but cleanly: the devices stop, the summary is printed.
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_demo(options, stop)
    except (DemoError, ConfigError, DaemonError, LineIOError, SourceError) as error:
        print(f"edge-inspect demo: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        rejected = ", ".join(f"{reason} {count}" for reason, count in summary["rejected"].items()) or "none"
        timing = summary["timing_error_ms"]
        print(f"parts {summary['parts']} of {summary['presented']} presented: pass {summary['pass']}, fail {summary['fail']}, "
              f"rejected {rejected}")
        print(f"reject pulses at the PLC: {summary['plc_reject_pulses']}, lost parts: {summary['lost']}, "
              f"timing error p50 {timing['p50']} ms, p99 {timing['p99']} ms")
        truth = summary["ground_truth"]
        print(f"against the rendered ground truth ({summary['model']}): {truth['defective_passed']} of "
              f"{truth['defective']} defective parts passed, {truth['good_failed']} of {truth['good']} good parts failed")
    expected_pulses = summary["fail"] + sum(summary["rejected"].values())
    if summary["lost"] or summary["plc_reject_pulses"] != expected_pulses:
        print(f"edge-inspect demo: {summary['lost']} part(s) lost, {summary['plc_reject_pulses']} pulse(s) for "
              f"{expected_pulses} failed or rejected part(s)", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not an existing folder")
    return path


if __name__ == "__main__":
    sys.exit(main())
