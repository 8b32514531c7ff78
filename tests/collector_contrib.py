"""The components of the OpenTelemetry Collector Contrib distribution, for checking our config.

Module names copied from open-telemetry/opentelemetry-collector-releases,
distributions/otelcol-contrib/manifest.yaml (components at v0.136.0, the image compose.yaml pins).
A config names a component by its type (`memory_limiter`, `otlphttp/nexus`); the module is the
type without underscores plus its kind (`memorylimiterprocessor`).
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


MANIFEST_MODULES: dict[str, frozenset[str]] = {
    "extensions": _words(
        """
        zpagesextension ackextension asapauthextension awsproxy azureauthextension
        basicauthextension bearertokenauthextension cgroupruntimeextension datadogextension
        awscloudwatchmetricstreamsencodingextension awslogsencodingextension
        googlecloudlogentryencodingextension jaegerencodingextension jsonlogencodingextension
        otlpencodingextension skywalkingencodingextension textencodingextension
        zipkinencodingextension googleclientauthextension headerssetterextension
        healthcheckextension httpforwarderextension jaegerremotesampling
        oauth2clientauthextension dockerobserver ecsobserver ecstaskobserver hostobserver
        k8sobserver kafkatopicsobserver oidcauthextension opampextension pprofextension
        sigv4authextension filestorage dbstorage redisstorageextension sumologicextension
        k8sleaderelector
    """
    ),
    "exporters": _words(
        """
        debugexporter nopexporter otlpexporter otlphttpexporter alibabacloudlogserviceexporter
        awscloudwatchlogsexporter awsemfexporter awskinesisexporter awsxrayexporter
        awss3exporter azureblobexporter azuredataexplorerexporter azuremonitorexporter
        bmchelixexporter carbonexporter cassandraexporter clickhouseexporter coralogixexporter
        datadogexporter datasetexporter dorisexporter elasticsearchexporter faroexporter
        fileexporter googlecloudexporter googlecloudpubsubexporter
        googlemanagedprometheusexporter honeycombmarkerexporter influxdbexporter kafkaexporter
        loadbalancingexporter logicmonitorexporter logzioexporter mezmoexporter
        opensearchexporter otelarrowexporter prometheusexporter prometheusremotewriteexporter
        pulsarexporter rabbitmqexporter sapmexporter sentryexporter signalfxexporter
        splunkhecexporter stefexporter sumologicexporter syslogexporter
        tencentcloudlogserviceexporter tinybirdexporter zipkinexporter
    """
    ),
    "processors": _words(
        """
        batchprocessor memorylimiterprocessor attributesprocessor cumulativetodeltaprocessor
        coralogixprocessor deltatocumulativeprocessor deltatorateprocessor filterprocessor
        geoipprocessor groupbyattrsprocessor groupbytraceprocessor intervalprocessor
        isolationforestprocessor k8sattributesprocessor logdedupprocessor
        metricsgenerationprocessor metricstarttimeprocessor metricstransformprocessor
        probabilisticsamplerprocessor redactionprocessor remotetapprocessor
        resourcedetectionprocessor resourceprocessor schemaprocessor spanprocessor
        sumologicprocessor tailsamplingprocessor transformprocessor
    """
    ),
    "receivers": _words(
        """
        nopreceiver otlpreceiver activedirectorydsreceiver aerospikereceiver apachereceiver
        apachesparkreceiver awscloudwatchreceiver awscontainerinsightreceiver
        awsecscontainermetricsreceiver awsfirehosereceiver awss3receiver awsxrayreceiver
        azureblobreceiver azureeventhubreceiver azuremonitorreceiver bigipreceiver
        carbonreceiver chronyreceiver cloudflarereceiver cloudfoundryreceiver collectdreceiver
        couchdbreceiver datadogreceiver dockerstatsreceiver elasticsearchreceiver
        envoyalsreceiver expvarreceiver faroreceiver filelogreceiver filestatsreceiver
        flinkmetricsreceiver fluentforwardreceiver githubreceiver
        googlecloudmonitoringreceiver googlecloudpubsubreceiver googlecloudspannerreceiver
        haproxyreceiver hostmetricsreceiver httpcheckreceiver influxdbreceiver iisreceiver
        jaegerreceiver jmxreceiver journaldreceiver k8sclusterreceiver k8seventsreceiver
        k8sobjectsreceiver kafkametricsreceiver kafkareceiver kubeletstatsreceiver
        libhoneyreceiver lokireceiver memcachedreceiver mongodbatlasreceiver mongodbreceiver
        mysqlreceiver namedpipereceiver netflowreceiver nginxreceiver nsxtreceiver ntpreceiver
        oracledbreceiver otlpjsonfilereceiver otelarrowreceiver podmanreceiver
        postgresqlreceiver prometheusreceiver prometheusremotewritereceiver purefareceiver
        purefbreceiver pulsarreceiver rabbitmqreceiver receivercreator redisreceiver
        riakreceiver saphanareceiver signalfxreceiver simpleprometheusreceiver
        skywalkingreceiver snowflakereceiver solacereceiver splunkenterprisereceiver
        splunkhecreceiver stefreceiver sqlqueryreceiver sqlserverreceiver sshcheckreceiver
        statsdreceiver syslogreceiver tcpcheckreceiver tcplogreceiver tlscheckreceiver
        udplogreceiver vcenterreceiver wavefrontreceiver snmpreceiver webhookeventreceiver
        windowseventlogreceiver windowsperfcountersreceiver zipkinreceiver zookeeperreceiver
    """
    ),
    "connectors": _words(
        """
        forwardconnector countconnector datadogconnector exceptionsconnector failoverconnector
        grafanacloudconnector otlpjsonconnector roundrobinconnector routingconnector
        servicegraphconnector spanmetricsconnector sumconnector signaltometricsconnector
    """
    ),
}
_SUFFIX = {
    "extensions": "extension",
    "exporters": "exporter",
    "processors": "processor",
    "receivers": "receiver",
    "connectors": "connector",
}


def has_component(kind: str, name: str) -> bool:
    """Whether the distribution has the component a config calls `name` (`type[/id]`)."""
    wanted = name.split("/", 1)[0].replace("_", "")
    for module in MANIFEST_MODULES[kind]:
        if module.removesuffix(_SUFFIX[kind]) == wanted or module == wanted:
            return True
    return False


# The collector's own metrics the alert rules read, with their instrument kind, as v0.136.0
# documents them (opentelemetry-collector exporter/exporterhelper/documentation.md and
# receiver/receiverhelper/documentation.md). In Prometheus format a counter gets `_total` unless
# the reader sets `without_type_suffix` (service/telemetry/otelconftelemetry in the same release).
INTERNAL_METRICS: dict[str, str] = {
    "otelcol_exporter_send_failed_spans": "counter",
    "otelcol_exporter_enqueue_failed_spans": "counter",
    "otelcol_exporter_sent_spans": "counter",
    "otelcol_exporter_queue_size": "gauge",
    "otelcol_exporter_queue_capacity": "gauge",
    "otelcol_receiver_accepted_spans": "counter",
    "otelcol_receiver_refused_spans": "counter",
    "otelcol_receiver_failed_spans": "counter",
}


def prometheus_name(metric: str, *, without_type_suffix: bool) -> str:
    """The name Prometheus sees for one of INTERNAL_METRICS."""
    counter = INTERNAL_METRICS[metric] == "counter"
    return metric + ("_total" if counter and not without_type_suffix else "")
