package validate

import (
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	rerankService = "lychee.v1.RerankService"
	gpuResource   = corev1.ResourceName("nvidia.com/gpu")
	// The startup probe must allow a 7B checkpoint to load and warm up.
	minStartupSeconds = 20 * 60
	queueMetric       = "lychee_queue_tokens"
)

// Check returns every broken invariant of one rendering; wantGPUs < 0 skips the GPU count check.
func Check(m *Manifests, wantGPUs int) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(m.Deployments) != 1 {
		fail("want exactly one Deployment, got %d", len(m.Deployments))
		return errs
	}
	d := m.Deployments[0]
	pod := d.Spec.Template.Spec
	if len(pod.Containers) == 0 {
		fail("Deployment %s has no containers", d.Name)
		return errs
	}
	c := pod.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	grpcPort, ok := ports["grpc"]
	if !ok {
		fail("container %s has no port named grpc", c.Name)
	}
	if env["LYCHEE_PORT"] != strconv.Itoa(int(grpcPort)) {
		fail("LYCHEE_PORT=%q but the grpc container port is %d", env["LYCHEE_PORT"], grpcPort)
	}

	tls := env["LYCHEE_TLS_CERT"] != ""
	mutualTLS := env["LYCHEE_TLS_CLIENT_CA"] != ""
	healthPort, hasHealth := ports["health"]
	if hasHealth && env["LYCHEE_HEALTH_PORT"] != strconv.Itoa(int(healthPort)) {
		fail("LYCHEE_HEALTH_PORT=%q but the health container port is %d", env["LYCHEE_HEALTH_PORT"], healthPort)
	}
	if mutualTLS && !hasHealth {
		fail("under mutual TLS the kubelet cannot present a client certificate: the probes need the plaintext " +
			"health port (a container port named health, LYCHEE_HEALTH_PORT)")
	}
	// The kubelet's gRPC probe has no TLS: a TLS server is probed on its plaintext health-only port, or,
	// without one, over HTTPS on the http port.
	probePort := grpcPort
	if tls {
		probePort = healthPort
	}
	checkProbe := func(name string, p *corev1.Probe, service, path string) {
		switch {
		case p == nil:
			fail("%s probe missing", name)
		case tls && !hasHealth:
			if p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Scheme != corev1.URISchemeHTTPS ||
				p.HTTPGet.Port != intstr.FromString("http") {
				fail("%s probe of a TLS server must be HTTPS GET %s on port http, got %+v", name, path, p.ProbeHandler)
			}
		case p.GRPC == nil:
			fail("%s probe must be a gRPC probe, got %+v", name, p.ProbeHandler)
		case p.GRPC.Port != probePort:
			fail("%s probe is on port %d, want %d (tls %v)", name, p.GRPC.Port, probePort, tls)
		case p.GRPC.Service == nil || *p.GRPC.Service != service:
			fail("%s probe must ask for health of service %q", name, service)
		}
	}
	checkProbe("startup", c.StartupProbe, rerankService, "/health")
	checkProbe("readiness", c.ReadinessProbe, rerankService, "/health")
	checkProbe("liveness", c.LivenessProbe, "", "/live")
	if _, ok := ports["http"]; tls && !hasHealth && !ok {
		fail("a TLS server needs the health port or the http port for its probes")
	}
	if p := c.StartupProbe; p != nil && p.PeriodSeconds*p.FailureThreshold < minStartupSeconds {
		fail("startup probe allows %d s for the model to load, want >= %d", p.PeriodSeconds*p.FailureThreshold,
			minStartupSeconds)
	}

	grace, err := strconv.ParseFloat(env["LYCHEE_GRACE_SECONDS"], 64)
	if err != nil {
		fail("LYCHEE_GRACE_SECONDS=%q is not a number", env["LYCHEE_GRACE_SECONDS"])
	}
	var preStop float64
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Exec != nil {
		cmd := c.Lifecycle.PreStop.Exec.Command
		if len(cmd) == 2 && cmd[0] == "sleep" {
			preStop, _ = strconv.ParseFloat(cmd[1], 64)
		}
	}
	if tgps := pod.TerminationGracePeriodSeconds; tgps == nil || float64(*tgps) <= preStop+grace {
		fail("terminationGracePeriodSeconds must exceed the preStop sleep (%g s) plus LYCHEE_GRACE_SECONDS (%g s)",
			preStop, grace)
	}
	if p := c.LivenessProbe; p != nil && float64(p.PeriodSeconds*p.FailureThreshold) <= grace {
		fail("liveness probe gives up after %d s, within the %g s drain (NOT_SERVING while draining)",
			p.PeriodSeconds*p.FailureThreshold, grace)
	}

	gpus := c.Resources.Limits[gpuResource]
	if wantGPUs >= 0 && gpus.Value() != int64(wantGPUs) {
		fail("GPU limit %s is %d, want %d", gpuResource, gpus.Value(), wantGPUs)
	}
	if devices := env["LYCHEE_DEVICES"]; devices != "" && devices != "all" && gpus.Value() > 0 &&
		int64(len(strings.Split(devices, ","))) > gpus.Value() {
		fail("LYCHEE_DEVICES=%q names more devices than the %d GPUs of the limit", devices, gpus.Value())
	}
	if !runsAsNonRoot(pod, c) {
		fail("the server must run with runAsNonRoot")
	}
	if d.Spec.Strategy.RollingUpdate != nil && d.Spec.Strategy.RollingUpdate.MaxUnavailable != nil &&
		d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		fail("rolling updates must keep every old pod until a new one is ready (maxUnavailable 0)")
	}

	errs = append(errs, checkServices(m, d, ports)...)
	errs = append(errs, checkScaling(m, d, ports)...)
	errs = append(errs, checkSecrets(m, c)...)
	return errs
}

func runsAsNonRoot(pod corev1.PodSpec, c corev1.Container) bool {
	if c.SecurityContext != nil && c.SecurityContext.RunAsNonRoot != nil {
		return *c.SecurityContext.RunAsNonRoot
	}
	return pod.SecurityContext != nil && pod.SecurityContext.RunAsNonRoot != nil && *pod.SecurityContext.RunAsNonRoot
}

func selects(selector map[string]string, d appsv1.Deployment) bool {
	return len(selector) > 0 && labels.SelectorFromSet(selector).Matches(labels.Set(d.Spec.Template.Labels))
}

func checkServices(m *Manifests, d appsv1.Deployment, ports map[string]int32) []error {
	var errs []error
	headless, balanced := 0, 0
	for _, s := range m.Services {
		if !selects(s.Spec.Selector, d) {
			errs = append(errs, fmt.Errorf("Service %s does not select the Deployment's pods", s.Name))
		}
		for _, p := range s.Spec.Ports {
			if p.Name == "" {
				errs = append(errs, fmt.Errorf("Service %s has an unnamed port %d", s.Name, p.Port))
			}
			if _, ok := ports[p.TargetPort.String()]; !ok {
				errs = append(errs, fmt.Errorf("Service %s port %s targets %q, not a named container port", s.Name,
					p.Name, p.TargetPort.String()))
			}
		}
		if strings.HasSuffix(s.Name, "-headless") {
			headless++
			if s.Spec.ClusterIP != corev1.ClusterIPNone {
				errs = append(errs, fmt.Errorf("headless Service %s has clusterIP %q, want None", s.Name, s.Spec.ClusterIP))
			}
		} else {
			balanced++
		}
	}
	if headless != 1 || balanced != 1 {
		errs = append(errs, fmt.Errorf("want one headless and one balanced Service, got %d and %d", headless, balanced))
	}
	for _, sm := range m.ServiceMonitors {
		found := false
		for _, s := range m.Services {
			if labels.SelectorFromSet(sm.Spec.Selector.MatchLabels).Matches(labels.Set(s.Labels)) {
				for _, ep := range sm.Spec.Endpoints {
					for _, p := range s.Spec.Ports {
						found = found || p.Name == ep.Port
					}
				}
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("ServiceMonitor %s selects no Service with its endpoint port", sm.Name))
		}
	}
	return errs
}

func checkScaling(m *Manifests, d appsv1.Deployment, ports map[string]int32) []error {
	var errs []error
	for _, pdb := range m.PDBs {
		if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, d) {
			errs = append(errs, fmt.Errorf("PodDisruptionBudget %s does not select the Deployment's pods", pdb.Name))
		}
	}
	for _, h := range m.HPAs {
		if h.Spec.ScaleTargetRef.Kind != "Deployment" || h.Spec.ScaleTargetRef.Name != d.Name {
			errs = append(errs, fmt.Errorf("HPA %s targets %s %s, not the Deployment %s", h.Name,
				h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name, d.Name))
		}
		queue := false
		for _, metric := range h.Spec.Metrics {
			queue = queue || (metric.Pods != nil && metric.Pods.Metric.Name == queueMetric)
		}
		if !queue {
			errs = append(errs, fmt.Errorf("HPA %s does not scale on the Pods metric %s", h.Name, queueMetric))
		}
		if _, ok := ports["metrics"]; !ok {
			errs = append(errs, fmt.Errorf("HPA %s needs the metrics port for %s", h.Name, queueMetric))
		}
		if d.Spec.Replicas != nil {
			errs = append(errs, fmt.Errorf("Deployment %s sets replicas while HPA %s owns them", d.Name, h.Name))
		}
	}
	return errs
}

func checkSecrets(m *Manifests, c corev1.Container) []error {
	var errs []error
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		ref := e.ValueFrom.SecretKeyRef
		for _, s := range m.Secrets {
			if s.Name != ref.Name {
				continue
			}
			if _, ok := s.StringData[ref.Key]; !ok {
				if _, ok := s.Data[ref.Key]; !ok {
					errs = append(errs, fmt.Errorf("env %s reads key %q that Secret %s lacks", e.Name, ref.Key, s.Name))
				}
			}
		}
	}
	return errs
}
