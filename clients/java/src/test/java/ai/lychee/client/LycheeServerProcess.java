package ai.lychee.client;

import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Starts the Python server ({@code lychee-grpc serve}) on the tiny random-weight model, on a free
 * port, and waits for grpc.health.v1 SERVING.
 *
 * <ul>
 *   <li>CLI: system property {@code lychee.cli}, else env {@code LYCHEE_CLI}, else
 *       {@code ../../.venv/bin/lychee-grpc} (relative to clients/java).
 *   <li>Model: system property {@code lychee.tinyModel}, else env {@code LYCHEE_TINY_MODEL}, else
 *       {@code ../../.cache/tiny-model}; created with {@code make-tiny-model} if it has no config.json.
 *   <li>Server output goes to {@code target/lychee-server.log} (or {@code lychee-server-<name>.log}).
 * </ul>
 */
public final class LycheeServerProcess implements AutoCloseable {
  static final Duration STARTUP_TIMEOUT = Duration.ofSeconds(120);

  private final Process process;
  private final Path log;
  private final int port;

  private LycheeServerProcess(Process process, Path log, int port) {
    this.process = process;
    this.log = log;
    this.port = port;
  }

  public int port() {
    return port;
  }

  public String target() {
    return "127.0.0.1:" + port;
  }

  /** SIGTERM without waiting: the server turns NOT_SERVING and drains (--grace-seconds 2). */
  public void terminate() {
    process.destroy();
  }

  /** SIGKILL without waiting, as a crashed pod or an OOM kill. */
  public void killNow() {
    process.destroyForcibly();
  }

  /** Waits for the process to exit; its exit code, or -1 if it is still running after {@code timeout}. */
  public int awaitExit(Duration timeout) throws InterruptedException {
    return process.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS) ? process.exitValue() : -1;
  }

  public static Path cli() {
    return Paths.get(setting("lychee.cli", "LYCHEE_CLI", "../../.venv/bin/lychee-grpc")).toAbsolutePath().normalize();
  }

  public static Path tinyModel() {
    return Paths.get(setting("lychee.tinyModel", "LYCHEE_TINY_MODEL", "../../.cache/tiny-model"))
        .toAbsolutePath().normalize();
  }

  private static String setting(String property, String env, String fallback) {
    String v = System.getProperty(property);
    if (v == null || v.isBlank()) {
      v = System.getenv(env);
    }
    return v == null || v.isBlank() ? fallback : v;
  }

  public static LycheeServerProcess start() throws IOException, InterruptedException {
    return start("", Map.of());
  }

  /** The Python interpreter of the CLI's virtual environment (beside the CLI). */
  public static Path python() {
    return cli().resolveSibling("python");
  }

  /**
   * The repository root, where {@code python -m tests.fault_server} runs: property
   * {@code lychee.repoRoot}, else env {@code LYCHEE_REPO_ROOT}, else the CLI's venv's parent.
   */
  public static Path repoRoot() {
    String v = setting("lychee.repoRoot", "LYCHEE_REPO_ROOT", "");
    return v.isEmpty() ? cli().getParent().getParent().getParent() : Paths.get(v).toAbsolutePath().normalize();
  }

  /**
   * Starts a server with extra environment settings (e.g. {@code LYCHEE_AUTH_TOKEN}); {@code name}
   * tells its log apart from the shared server's.
   */
  public static LycheeServerProcess start(String name, Map<String, String> env)
      throws IOException, InterruptedException {
    return start(name, env, List.of(cli().toString(), "serve"));
  }

  /**
   * Starts {@code command --model ... --port ...}: {@code command} is {@code [cli, serve]}, or e.g.
   * {@code [python, -m, tests.fault_server, slow-batches, 2]} for a server with a fault injected
   * (run from {@link #repoRoot()}).
   */
  public static LycheeServerProcess start(String name, Map<String, String> env, List<String> command)
      throws IOException, InterruptedException {
    Path cli = cli();
    if (!Files.isExecutable(cli)) {
      throw new IllegalStateException("lychee-grpc CLI not found at " + cli
          + " (set -Dlychee.cli=... or LYCHEE_CLI; build the Python venv first)");
    }
    Path logDir = Paths.get("target").toAbsolutePath();
    Files.createDirectories(logDir);
    Path model = tinyModel();
    if (!Files.exists(model.resolve("config.json"))) {
      Path makeLog = logDir.resolve("make-tiny-model.log");
      Process p = new ProcessBuilder(cli.toString(), "make-tiny-model", model.toString())
          .redirectErrorStream(true)
          .redirectOutput(makeLog.toFile())
          .start();
      if (!p.waitFor(300, TimeUnit.SECONDS)) {
        p.destroyForcibly().waitFor();
        throw new IllegalStateException("make-tiny-model timed out; see " + makeLog);
      }
      if (p.exitValue() != 0 || !Files.exists(model.resolve("config.json"))) {
        throw new IllegalStateException("make-tiny-model failed (exit " + p.exitValue() + "):\n" + tail(makeLog));
      }
    }

    int port = freePort();
    Path log = logDir.resolve(name.isEmpty() ? "lychee-server.log" : "lychee-server-" + name + ".log");
    List<String> argv = new java.util.ArrayList<>(command);
    argv.addAll(List.of("--model", model.toString(),
        "--host", "127.0.0.1", "--port", Integer.toString(port), "--grace-seconds", "2"));
    ProcessBuilder pb = new ProcessBuilder(argv)
        .directory(repoRoot().toFile())
        .redirectErrorStream(true)
        .redirectOutput(log.toFile());
    pb.environment().put("PYTHONUNBUFFERED", "1");
    pb.environment().putAll(env);
    Process process = pb.start();
    LycheeServerProcess server = new LycheeServerProcess(process, log, port);
    Runtime.getRuntime().addShutdownHook(new Thread(server::kill));
    try {
      server.awaitServing();
    } catch (RuntimeException | InterruptedException e) {
      server.close();
      throw e;
    }
    return server;
  }

  private void awaitServing() throws InterruptedException {
    ManagedChannel ch = Grpc.newChannelBuilder(target(), InsecureChannelCredentials.create()).build();
    try {
      HealthGrpc.HealthBlockingStub health = HealthGrpc.newBlockingStub(ch);
      long deadline = System.nanoTime() + STARTUP_TIMEOUT.toNanos();
      String last = "no answer";
      while (System.nanoTime() < deadline) {
        if (!process.isAlive()) {
          throw new IllegalStateException("lychee-grpc serve exited with " + process.exitValue()
              + " before SERVING:\n" + tail(log));
        }
        try {
          HealthCheckResponse r = health.withDeadlineAfter(2, TimeUnit.SECONDS)
              .check(HealthCheckRequest.newBuilder().setService("").build());
          if (r.getStatus() == HealthCheckResponse.ServingStatus.SERVING) {
            return;
          }
          last = r.getStatus().toString();
        } catch (RuntimeException e) {
          last = e.toString();
        }
        Thread.sleep(500);
      }
      throw new IllegalStateException("server not SERVING after " + STARTUP_TIMEOUT + " (last: " + last + "):\n"
          + tail(log));
    } finally {
      ch.shutdownNow();
    }
  }

  /** The last lines of the server log, for failure messages. */
  public String logTail() {
    return tail(log);
  }

  private static String tail(Path file) {
    try {
      List<String> lines = Files.readAllLines(file, StandardCharsets.UTF_8);
      return String.join("\n", lines.subList(Math.max(0, lines.size() - 40), lines.size()));
    } catch (IOException e) {
      return "(no log: " + e + ")";
    }
  }

  private static int freePort() throws IOException {
    try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getByName("127.0.0.1"))) {
      s.setReuseAddress(true);
      return s.getLocalPort();
    }
  }

  private void kill() {
    process.descendants().forEach(ProcessHandle::destroyForcibly);
    if (process.isAlive()) {
      process.destroyForcibly();
    }
  }

  /** SIGTERM, wait up to 20 s for the drain, then SIGKILL. */
  @Override
  public void close() throws InterruptedException {
    List<ProcessHandle> children = process.descendants().toList();
    if (process.isAlive()) {
      process.destroy();
      if (!process.waitFor(20, TimeUnit.SECONDS)) {
        process.destroyForcibly();
        process.waitFor(10, TimeUnit.SECONDS);
      }
    }
    // Worker processes the server may have spawned and left behind.
    for (ProcessHandle child : children) {
      if (child.isAlive()) {
        child.destroyForcibly();
      }
    }
  }
}
